"""On the real daemon: every journaled step of the operations libvirt's test driver cannot run
(external snapshots, disk hot-plug with volumes) and of create/clone, cut right after each record.

Shut-off VMs with 16 MiB volumes: no guest has to boot.  After each cut the records go through
JSON to :func:`run_recovery` (as another process runs them); what is left must be exactly the
state before, or for an operation past its point of no return exactly the state it leaves done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kvmgr.connect import Connection
from kvmgr.services import clones, resources, snapshots, vms
from kvmgr.services.create import DiskRequest, VMSpec, create_vm
from kvmgr.services.steps import LocalSteps
from kvmgr.units import MIB
from tests.steps_harness import Cut, CutSteps, libvirt_state, recover_elsewhere

from .conftest import Cleanup, purge_prefix

PREFIX = "t-jrnl-"
VM = f"{PREFIX}vm"


def _vm(conn: Connection, name: str = VM, disks: int = 1) -> None:
    create_vm(
        conn,
        VMSpec(
            name,
            memory=128 * MIB,
            vcpus=1,
            disks=[DiskRequest(size=16 * MIB) for _ in range(disks)],
            nics=[],
            graphics="none",
            start=False,
        ),
    )


def _with_external(conn: Connection, *names: str) -> None:
    _vm(conn)
    for name in names:
        snapshots.create_snapshot(conn, VM, name, disk_only=True)


Setup = Callable[[Connection], None]
Operation = Callable[[Connection, LocalSteps], object]

OPERATIONS: dict[str, tuple[Setup, Operation]] = {
    "create": (
        lambda c: None,
        lambda c, s: create_vm(
            c,
            VMSpec(
                VM,
                memory=128 * MIB,
                vcpus=1,
                disks=[DiskRequest(size=16 * MIB), DiskRequest(size=16 * MIB)],
                nics=[],
                graphics="none",
                start=False,
            ),
            steps=s,
        ),
    ),
    "clone-full": (_vm, lambda c, s: clones.clone_vm(c, VM, f"{PREFIX}copy", steps=s)),
    "snapshot-external-create": (
        _vm,
        lambda c, s: snapshots.create_snapshot(c, VM, "s1", disk_only=True, steps=s),
    ),
    "snapshot-external-revert": (
        lambda c: _with_external(c, "s1", "s2"),
        lambda c, s: snapshots.revert_snapshot(c, VM, "s1", steps=s),
    ),
    "snapshot-external-delete": (
        lambda c: _with_external(c, "s1", "s2"),  # s1's image merges (qemu-img, VM off)
        lambda c, s: snapshots.delete_snapshot(c, VM, "s1", steps=s),
    ),
    "disk-add": (_vm, lambda c, s: resources.add_disk(c, VM, size=16 * MIB, steps=s)),
    "disk-remove": (
        lambda c: _vm(c, disks=2),
        lambda c, s: resources.remove_disk(c, VM, "vdb", delete_volume=True, steps=s),
    ),
    "vm-delete": (lambda c: _with_external(c, "s1"), lambda c, s: vms.delete(c, VM, steps=s)),
}


def state(conn: Connection) -> dict[str, Any]:
    return libvirt_state(conn, PREFIX)


_FULL: dict[str, tuple[int, dict[str, Any]]] = {}


def _full_run(conn: Connection, name: str) -> tuple[int, dict[str, Any]]:
    if name not in _FULL:
        setup, operation = OPERATIONS[name]
        purge_prefix(conn, PREFIX)
        setup(conn)
        journal = CutSteps()
        operation(conn, journal)
        _FULL[name] = (journal.count, state(conn))
        purge_prefix(conn, PREFIX)
    return _FULL[name]


# The number of records of each operation (checked against a full run in the test itself).
RECORDS = {
    "create": 3,
    "clone-full": 2,
    "snapshot-external-create": 3,  # record the overlay as the VM's, make it, take the snapshot
    "snapshot-external-revert": 3,
    "snapshot-external-delete": 1,  # rolls forward from its first record
    "disk-add": 3,  # record as the VM's, make the volume, attach it
    "disk-remove": 1,
    "vm-delete": 1,
}
CASES = [(name, cut) for name, count in RECORDS.items() for cut in range(1, count + 2)]


@pytest.mark.parametrize(("name", "cut"), CASES, ids=[f"{n}-after-record-{c}" for n, c in CASES])
def test_cut_after_each_record_recovers_to_before_or_done(
    conn: Connection, cleanup: Cleanup, name: str, cut: int
) -> None:
    cleanup.prefix(PREFIX)
    count, done = _full_run(conn, name)
    assert count == RECORDS[name]
    setup, operation = OPERATIONS[name]
    setup(conn)
    before = state(conn)
    journal = CutSteps(cut)
    if cut <= count:
        with pytest.raises(Cut):
            operation(conn, journal)
    else:
        operation(conn, journal)  # done, but "killed" before the journal heard so
    assert recover_elsewhere(conn, journal) == []
    after = state(conn)
    # Nothing half made: all of it undone, or (past the point of no return) all of it done.
    # A settle action ends either way (it keeps a snapshot libvirt took, else removes it).
    assert after in (before, done)
    if cut > count:  # every step had acted: undo-only operations are undone, others finished
        assert after == (done if journal.finish else before)
    assert recover_elsewhere(conn, journal) == []  # recovery run twice changes nothing more
    assert state(conn) == after
