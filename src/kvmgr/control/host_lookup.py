"""The URI of a CLI command's host, read from the store's SQLite file with the standard library.

Every ``kvmgr vm list`` (and every other command on one host) resolves its host first.  Through
the registry that costs SQLAlchemy, Alembic's schema check and pydantic's settings: about 1 s of
CPU, five times the rest of a short command.  This module answers the common case, a SQLite
store, with one read-only query, and says "don't know" (None) whenever it cannot answer for sure
(PostgreSQL, no hosts table yet, an unknown or ambiguous host), so the caller asks the registry,
which then also gives the error message.  The rule for the default host is here, once, and the
registry uses it too.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

LOCAL = "local"


def choose_default(hosts: Sequence[tuple[str, str, bool]]) -> int | None:
    """Index of the host commands act on without ``--host`` among (name, uri, is_default)
    rows: the default one, else the only one, else ``local``; None when none of these."""
    for index, (_name, _uri, is_default) in enumerate(hosts):
        if is_default:
            return index
    if len(hosts) == 1:
        return 0
    for index, (name, _uri, _default) in enumerate(hosts):
        if name == LOCAL:
            return index
    return None


def database_url() -> str:
    """``KVMGR_DB_URL``, else SQLite under ``KVMGR_STATE_DIR``: the rule of
    :attr:`kvmgr.api.settings.Settings.database_url` (a test holds the two together)."""
    url = os.environ.get("KVMGR_DB_URL")
    if url:
        return url
    state = os.environ.get("KVMGR_STATE_DIR")
    if state:
        base = Path(state)
    else:
        base = Path("/var/lib/kvmgr") if os.geteuid() == 0 else Path.home() / ".local/share/kvmgr"
    return f"sqlite:///{base / 'db' / 'kvmgr.db'}"


def _sqlite_file(url: str) -> Path | None:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url in ("sqlite:///:memory:",):
        return None
    return Path(url[len(prefix) :])


def _rows() -> list[tuple[str, str, bool]] | None:
    """(name, uri, is_default) of every registered host, or None: ask the registry."""
    path = _sqlite_file(database_url())
    if path is None:
        return None
    if not path.exists():
        return []  # no store yet: nothing is registered
    try:
        location = f"{path.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(location, uri=True, timeout=5)) as db:
            rows = db.execute("SELECT name, uri, is_default FROM hosts ORDER BY name").fetchall()
    except sqlite3.Error:
        return None  # no hosts table yet (an older schema), locked, unreadable: the registry
    return [(str(name), str(uri), bool(is_default)) for name, uri, is_default in rows]


def quick_uri(host: str | None, default_uri: str) -> str | None:
    """The URI of registered host ``host`` (the default host when None), or None: ask the
    registry.  ``default_uri`` is the local daemon's, for a store with no host yet."""
    hosts = _rows()
    if hosts is None:
        return None
    if host is not None:
        return next((uri for name, uri, _default in hosts if name == host), None)
    if not hosts:
        return default_uri
    index = choose_default(hosts)
    return None if index is None else hosts[index][1]


def quick_hosts() -> list[tuple[str, str]] | None:
    """(name, uri) of every registered host; None (ask the registry) when unsure or when none
    is registered yet (the registry registers the local daemon then)."""
    hosts = _rows()
    if not hosts:
        return None
    return [(name, uri) for name, uri, _default in hosts]
