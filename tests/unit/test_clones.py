"""Clone and template policy on libvirt's test driver (copies themselves are integration tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import AlreadyExists, Busy, InvalidState
from kvmgr.services import clones, locks, vms

VM = "test"  # the test driver's running default domain


@pytest.fixture
def conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Connection]:
    monkeypatch.setenv(locks.LOCK_DIR_ENV, str(tmp_path / "locks"))
    connection = open_connection("test:///default")
    yield connection
    connection.close()


def test_running_source_is_refused_with_a_way_out(conn: Connection) -> None:
    with pytest.raises(InvalidState, match="running") as err:
        clones.clone_vm(conn, VM, "copy")
    assert "--snapshot" in str(err.value)
    assert not vms.exists(conn, "copy")


def test_existing_target_name_refused(conn: Connection) -> None:
    with pytest.raises(AlreadyExists):
        clones.clone_vm(conn, VM, VM)


def test_linked_clone_needs_a_template(conn: Connection) -> None:
    dom = conn.virconn.lookupByName(VM)
    dom.destroy()
    try:
        with pytest.raises(InvalidState, match="kvmgr vm template test"):
            clones.clone_vm(conn, VM, "copy", linked=True)
    finally:
        dom.create()


def test_template_needs_a_shut_off_vm(conn: Connection) -> None:
    with pytest.raises(InvalidState, match="shut it down"):
        clones.mark_template(conn, VM)


def test_clone_waits_for_nobody_a_busy_source_is_refused(conn: Connection) -> None:
    uuid = conn.virconn.lookupByName(VM).UUIDString()
    path = locks.vm_lock_path(uuid)
    import multiprocessing

    ready = multiprocessing.get_context("fork").Event()
    done = multiprocessing.get_context("fork").Event()

    def hold() -> None:
        with locks.file_lock(path, "snapshot delete nightly", what="VM"):
            ready.set()
            done.wait(10)

    holder = multiprocessing.get_context("fork").Process(target=hold)
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(Busy, match="VM is busy: snapshot delete nightly"):
            clones.clone_vm(conn, VM, "copy")
        with pytest.raises(Busy, match="snapshot delete nightly"):
            vms.delete(conn, VM, force=True)
        assert vms.exists(conn, VM)
    finally:
        done.set()
        holder.join(10)
