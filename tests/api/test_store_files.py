"""The SQLite database holds password and token hashes: its file is 0600, its directory 0700."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kvmgr.api.settings import Settings
from kvmgr.store import users
from kvmgr.store.db import Store
from kvmgr.store.models import Role


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_default_database_is_private_even_with_an_open_umask(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = os.umask(0)  # the worst case: every file would be world-writable
    try:
        store = Store(Settings(state_dir=state).database_url)
        with store.session() as session:
            users.create_user(session, "admin", "correct horse battery", Role.admin, None)
        store.dispose()
    finally:
        os.umask(old)
    database = state / "db" / "kvmgr.db"
    assert mode(database.parent) == 0o700
    assert mode(database) == 0o600
    wal_files = [p for p in database.parent.iterdir() if p.name != "kvmgr.db"]
    assert all(mode(p) & 0o077 == 0 for p in wal_files), [(p, oct(mode(p))) for p in wal_files]


def test_a_too_open_database_file_is_tightened_and_a_shared_directory_left_alone(
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o755)
    database = tmp_path / "kvmgr.db"
    database.touch()
    database.chmod(0o644)
    Store(f"sqlite:///{database}").dispose()
    assert mode(database) == 0o600
    assert mode(tmp_path) == 0o755
