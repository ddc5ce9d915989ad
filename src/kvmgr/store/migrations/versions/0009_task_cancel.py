"""tasks: cancel_requested, set by a cancel of a running task whose kind can stop half way

Revision ID: 0009_task_cancel
Revises: 0004_tasks
Create Date: 2026-12-01 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_task_cancel"
down_revision = "0004_tasks"  # the tasks table as 0004 left it
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("cancel_requested")
