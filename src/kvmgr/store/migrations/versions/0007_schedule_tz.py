"""backup schedules: the time zone their --at is a wall time in

Revision ID: 0007_schedule_tz
Revises: 0006_backup_schedules
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_schedule_tz"
down_revision = "0006_backup_schedules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: a schedule made before zones existed stays in UTC.
    with op.batch_alter_table("backup_schedules", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tz", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backup_schedules", schema=None) as batch_op:
        batch_op.drop_column("tz")
