"""Alembic environment: kvmgr hands over an open connection (see kvmgr.store.migrate)."""

from __future__ import annotations

from alembic import context

from kvmgr.store.models import Base
from kvmgr.store.schema import load_all_models

load_all_models()
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through kvmgr.store.migrate, which passes a connection")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things: batch mode copies the table
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
