"""Where kvmgr keeps its state: the state dir and the database URL, from the environment.

``kvmgr.api.settings.Settings`` reads the same variables with pydantic-settings; this module
gives the database URL without importing pydantic (~0.5 s of start-up here), because every CLI
command that changes a VM opens the store.  A test keeps the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """The state dir when ``KVMGR_STATE_DIR`` does not say: /var/lib/kvmgr as root."""
    return Path("/var/lib/kvmgr") if os.geteuid() == 0 else Path.home() / ".local/share/kvmgr"


def database_url(db_url: str | None, state_dir: Path) -> str:
    """``db_url`` (else ``KVMGR_DATABASE_URL``), else the SQLite file under ``state_dir``.

    The SQLite file gets a directory of its own: the state dir also holds the ISO pool, which
    QEMU must be able to traverse, so only the database's directory can be closed to everyone
    but us (0700).  ``KVMGR_DATABASE_URL`` is the name the fleet documentation uses;
    ``KVMGR_DB_URL`` came first.
    """
    return (
        db_url
        or os.environ.get("KVMGR_DATABASE_URL")
        or f"sqlite:///{state_dir / 'db' / 'kvmgr.db'}"
    )


def state_dir_from_environment() -> Path:
    """The state dir as ``Settings().state_dir`` gives it (variable names in any case, as
    pydantic-settings matches them)."""
    env = {name.upper(): value for name, value in os.environ.items()}
    state = env.get("KVMGR_STATE_DIR")
    return Path(state) if state else default_state_dir()


def url_from_environment() -> str:
    """The database URL as ``Settings().database_url`` gives it."""
    env = {name.upper(): value for name, value in os.environ.items()}
    return database_url(env.get("KVMGR_DB_URL"), state_dir_from_environment())
