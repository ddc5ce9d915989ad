"""Live changes of a VM are serialised with snapshots, clones and deletes of that VM."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import Busy
from kvmgr.services import locks, resources
from kvmgr.services.create import DiskRequest, VMSpec, create_vm
from kvmgr.units import GIB, MIB

VM = "locked-vm"


@pytest.fixture
def conn() -> Iterator[Connection]:
    connection = open_connection("test:///default")
    create_vm(
        connection,
        VMSpec(name=VM, memory=256 * MIB, vcpus=1, disks=[DiskRequest(size=GIB)], start=False),
    )
    yield connection
    connection.close()


def test_live_changes_are_refused_while_another_process_holds_the_vm(conn: Connection) -> None:
    path = locks.vm_lock_path(conn.virconn.lookupByName(VM).UUIDString())
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()

    def hold() -> None:
        with locks.file_lock(path, "snapshot create nightly", what="VM"):
            ready.set()
            done.wait(10)

    holder = context.Process(target=hold)
    holder.start()
    try:
        assert ready.wait(10)
        before = conn.virconn.lookupByName(VM).XMLDesc(0)
        with pytest.raises(Busy, match="VM is busy: snapshot create nightly"):
            resources.set_resources(conn, VM, vcpus=1)
        with pytest.raises(Busy, match="snapshot create nightly"):
            resources.add_disk(conn, VM, size=GIB)
        assert conn.virconn.lookupByName(VM).XMLDesc(0) == before  # nothing changed
    finally:
        done.set()
        holder.join(10)


def test_a_change_takes_the_lock_and_releases_it(conn: Connection) -> None:
    resources.set_resources(conn, VM, memory=128 * MIB)
    path = locks.vm_lock_path(conn.virconn.lookupByName(VM).UUIDString())
    with locks.file_lock(path, "probe", what="VM"):
        pass  # free again: the change released it
