"""Bring a database to the newest schema with Alembic, on every open of the store.

The revisions live in ``kvmgr/store/migrations/versions``.  Work of separate capabilities adds
revisions on separate branches off the baseline, so the target is every head (``heads``).

A database made before kvmgr used Alembic has the baseline's tables and no ``alembic_version``:
it is stamped at the baseline first, then upgraded like any other.

Every CLI command that changes a VM opens the store, so the usual case (schema current) must not
pay for importing Alembic (~0.6 s of start-up on a loaded machine): the heads are read from the
revision files' ``revision`` / ``down_revision`` lines and the current ones with one SELECT;
Alembic is imported only when there is something to do.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from alembic.config import Config

BASELINE = "0001_baseline"
_SCRIPTS = Path(__file__).with_name("migrations")


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


_ASSIGNMENT = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)


@cache
def head_revisions() -> frozenset[str]:
    """The heads of the revision graph shipped with this kvmgr, from the revision files.

    The same as Alembic's ``ScriptDirectory.get_heads()`` (a test compares them), without
    importing Alembic.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (_SCRIPTS / "versions").glob("*.py"):
        found: dict[str, Any] = {}
        for name, value in _ASSIGNMENT.findall(path.read_text()):
            found.setdefault(name, ast.literal_eval(value.strip()))
        if "revision" not in found:
            continue
        revisions.add(str(found["revision"]))
        down = found.get("down_revision")
        parents.update([down] if isinstance(down, str) else list(down or ()))
    return frozenset(revisions - parents)


def alembic_heads() -> frozenset[str]:
    """The heads as Alembic computes them (for the test of :func:`head_revisions`)."""
    from alembic.script import ScriptDirectory

    return frozenset(ScriptDirectory.from_config(_config()).get_heads())


def current_revisions(connection: Connection) -> frozenset[str]:
    from alembic.runtime.migration import MigrationContext

    return frozenset(MigrationContext.configure(connection).get_current_heads())


def _recorded_revisions(engine: Engine) -> frozenset[str] | None:
    """What ``alembic_version`` says, in one SELECT (None: no such table, or unreadable)."""
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version"))
            return frozenset(str(row[0]) for row in rows)
    except SQLAlchemyError:
        return None


def upgrade(engine: Engine) -> None:
    """Apply every missing revision (a no-op costing one query when the schema is current)."""
    if _recorded_revisions(engine) == head_revisions():
        return
    from alembic import command

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
