"""Bounded text columns never overflow: the store clips every String(n) value to its column.

SQLite ignores the lengths, PostgreSQL raises, so an overlong VM name in a denied request used to
fail the audit write and turn a 403 into a 500 (issue 11, hole 5).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmgr.control import tasks
from kvmgr.store import audit
from kvmgr.store.clip import ELLIPSIS, clip, column_length
from kvmgr.store.db import Store
from kvmgr.store.models import AuditEntry, Role, Task
from kvmgr.store.users import Principal
from tests.api.test_postgres import pg_url

__all__ = ["pg_url"]  # the module-scoped PostgreSQL fixture, reused

LONG = "x" * 500


def _write_and_read(store: Store) -> tuple[AuditEntry, Task]:
    with store.session() as session:
        audit.record(session, user=LONG, action=LONG, target=LONG, result="denied", source=LONG)
    owner = Principal(id=1, name=LONG, role=Role.admin, group=None)
    task = tasks.submit(store, "noop", {}, owner=owner, target=LONG, host=LONG)
    with store.session() as session:
        row = tasks.get_task(session, owner, task["id"])
        session.expunge(row)
        entry = audit.entries(session, limit=1)[0]
        session.expunge(entry)
    return entry, row


def _assert_clipped(entry: AuditEntry, task: Task) -> None:
    for model, row, names in (
        (AuditEntry, entry, ("user", "action", "target", "source")),
        (Task, task, ("target", "owner", "host")),
    ):
        for name in names:
            length = column_length(model, name)
            assert length is not None and length < len(LONG)
            value = getattr(row, name)
            assert len(value) == length, (model.__name__, name)
            assert value == "x" * (length - 1) + ELLIPSIS
    assert entry.result == "denied"
    assert task.state == "queued"


def test_clip_keeps_short_values_and_unbounded_columns() -> None:
    assert clip(AuditEntry, "target", "vm-1") == "vm-1"
    assert clip(AuditEntry, "detail", LONG * 3) == LONG * 3  # Text: no length
    exact = "y" * 200
    assert clip(AuditEntry, "target", exact) == exact
    assert clip(AuditEntry, "target", exact + "z") == "y" * 199 + ELLIPSIS


def test_long_values_are_clipped_on_sqlite(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'kvmgr.db'}")
    try:
        _assert_clipped(*_write_and_read(store))
    finally:
        store.dispose()


@pytest.mark.postgres
def test_long_values_fit_on_postgres(pg_url: str) -> None:
    store = Store(pg_url)
    try:
        _assert_clipped(*_write_and_read(store))
    finally:
        store.dispose()
