"""task_secrets: a task's secrets (Windows passwords, product key) until its handler takes them

Revision ID: 0010_task_secrets
Revises: 0004_tasks
Create Date: 2026-12-02 01:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_task_secrets"
down_revision = "0004_tasks"  # the tasks whose secrets these are
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_secrets",
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("task_secrets")
