"""backups: the catalog of backup repositories and points

Revision ID: 0005_backups
Revises: 0001_baseline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_backups"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backup_repos",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "backup_points",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("repo", sa.String(length=64), nullable=False),
        sa.Column("vm_name", sa.String(length=200), nullable=False),
        sa.Column("vm_uuid", sa.String(length=36), nullable=False),
        sa.Column("host", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("parent", sa.String(length=200), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("consistency", sa.String(length=16), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("bytes_read", sa.BigInteger(), nullable=False),
        sa.Column("bytes_stored", sa.BigInteger(), nullable=False),
        sa.Column("verified", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["repo"], ["backup_repos.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("backup_points", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_backup_points_repo"), ["repo"], unique=False)
        batch_op.create_index(batch_op.f("ix_backup_points_vm_name"), ["vm_name"], unique=False)
        batch_op.create_index(batch_op.f("ix_backup_points_vm_uuid"), ["vm_uuid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("backup_points", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_backup_points_vm_uuid"))
        batch_op.drop_index(batch_op.f("ix_backup_points_vm_name"))
        batch_op.drop_index(batch_op.f("ix_backup_points_repo"))
    op.drop_table("backup_points")
    op.drop_table("backup_repos")
