"""Bring a database to the newest schema with Alembic, on every open of the store.

The revisions live in ``kvmgr/store/migrations/versions``.  Work of separate capabilities adds
revisions on separate branches off the baseline, so the target is every head (``heads``).

A database made before kvmgr used Alembic has the baseline's tables and no ``alembic_version``:
it is stamped at the baseline first, then upgraded like any other.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

BASELINE = "0001_baseline"
_SCRIPTS = Path(__file__).with_name("migrations")


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def head_revisions() -> frozenset[str]:
    """The heads of the revision graph shipped with this kvmgr."""
    return frozenset(ScriptDirectory.from_config(_config()).get_heads())


def current_revisions(connection: Connection) -> frozenset[str]:
    return frozenset(MigrationContext.configure(connection).get_current_heads())


def upgrade(engine: Engine) -> None:
    """Apply every missing revision (a no-op costing one query when the schema is current)."""
    with engine.connect() as connection:
        if current_revisions(connection) == head_revisions():
            return
    with engine.begin() as connection:
        _serialise_migrations(connection)
        current = current_revisions(connection)
        if current == head_revisions():
            return  # another process migrated while we waited for the lock
        if not current and inspect(connection).has_table("users"):
            command.stamp(_config(connection), BASELINE)
        command.upgrade(_config(connection), "heads")


def _serialise_migrations(connection: Connection) -> None:
    """Let one process migrate at a time: the others wait, then find nothing to do."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7355608)")
    elif connection.dialect.name == "sqlite":
        # The write lock up front (the busy timeout makes others wait): pysqlite would otherwise
        # run each DDL statement in autocommit, and two first opens would both create tables.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
