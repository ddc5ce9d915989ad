"""ownership of every object by user id; tombstones of deleted users; vm_owners moved over

Revision ID: 0008_ownership
Revises: 0001_baseline

vm_owners named its owner by user *name*, so a new user given a deleted user's name inherited
their VMs.  Each row moves to object_owners with the id of the user of that name, or, when no
user has that name any more, with a new tombstone id that no user will ever get.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_ownership"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "object_owners",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("group", sa.String(length=64), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("creator", sa.String(length=64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "host", "key"),
    )
    with op.batch_alter_table("object_owners", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_object_owners_owner_id"), ["owner_id"], unique=False)
    op.create_table(
        "user_tombstones",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("deleted", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # A database stamped at the baseline from before Alembic may never have had the table.
    if "vm_owners" in sa.inspect(op.get_bind()).get_table_names():
        _move_vm_owners()
        with op.batch_alter_table("vm_owners", schema=None) as batch_op:
            batch_op.drop_index(batch_op.f("ix_vm_owners_name"))
        op.drop_table("vm_owners")


def _move_vm_owners() -> None:
    bind = op.get_bind()
    ids = {name: uid for uid, name in bind.execute(sa.text("SELECT id, name FROM users"))}
    top = max(ids.values(), default=0)
    tombstones: dict[str, int] = {}
    rows = bind.execute(sa.text('SELECT uuid, name, owner, "group" FROM vm_owners')).all()
    for uuid, vm_name, owner, group in rows:
        owner_id = ids.get(owner)
        if owner_id is None:
            if owner not in tombstones:
                top += 1
                tombstones[owner] = top
                bind.execute(
                    sa.text(
                        "INSERT INTO user_tombstones (id, name, deleted) "
                        "VALUES (:i, :n, CURRENT_TIMESTAMP)"
                    ),
                    {"i": top, "n": owner},
                )
            owner_id = tombstones[owner]
        bind.execute(
            sa.text(
                'INSERT INTO object_owners (kind, host, key, owner_id, "group", label, creator, '
                "created) VALUES ('vm', 'local', :k, :o, :g, :l, :c, CURRENT_TIMESTAMP)"
            ),
            {"k": uuid, "o": owner_id, "g": group, "l": vm_name, "c": owner},
        )


def downgrade() -> None:
    op.create_table(
        "vm_owners",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("group", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("uuid"),
    )
    with op.batch_alter_table("vm_owners", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vm_owners_name"), ["name"], unique=False)
    op.execute(
        'INSERT INTO vm_owners (uuid, name, owner, "group") '
        'SELECT o.key, o.label, COALESCE(u.name, o.creator), o."group" FROM object_owners o '
        "LEFT JOIN users u ON u.id = o.owner_id WHERE o.kind = 'vm' AND o.host = 'local'"
    )
    with op.batch_alter_table("object_owners", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_object_owners_owner_id"))
    op.drop_table("user_tombstones")
    op.drop_table("object_owners")
