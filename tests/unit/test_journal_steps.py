"""Every multi-step operation, cut right after each journal record, recovers to nothing left.

On libvirt's test driver: each operation runs once to count its records, then once per record
with an exception raised right after that record (the step it announces has not acted), and once
more where it finishes but is "killed" before it could say so.  The records then go through JSON
(as a journal in the database would keep them) to :func:`run_recovery`, as a process that never
saw the operation would run them.  What is left must be exactly the state before, or, for an
operation past its point of no return, exactly the state of the operation done.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import InvalidState
from kvmgr.services import clones, snapshots, steps, vms
from kvmgr.services.create import DiskRequest, VMSpec, create_vm
from kvmgr.services.steps import LocalSteps
from kvmgr.services.storage_pools import ensure_pool
from kvmgr.units import GIB, MIB
from tests.steps_harness import Cut, CutSteps, recover_elsewhere
from tests.testdriver import reset_default_test_driver


@pytest.fixture
def conn() -> Iterator[Connection]:
    reset_default_test_driver()  # one driver for the whole process: start from its defaults
    connection = open_connection("test:///default")
    yield connection
    connection.close()


def state(conn: Connection) -> dict[str, Any]:
    """Everything an operation could leave behind, by name (UUIDs differ from run to run)."""
    domains = {}
    for dom in conn.virconn.listAllDomains(0):
        meta = vms.definition(dom, inactive=True).kvmgr_metadata()
        domains[dom.name()] = {
            "active": bool(dom.isActive()),
            "snapshots": sorted(dom.snapshotListNames(0)),
            "owned": sorted(meta.owned_volumes) if meta else [],
            "disks": sorted(
                d.source_path or "" for d in vms.definition(dom, inactive=True).devices.disks
            ),
        }
    volumes = {}
    for pool in conn.virconn.listAllStoragePools(0):
        if pool.isActive():
            pool.refresh(0)
            volumes[pool.name()] = sorted(pool.listVolumes())
    return {"domains": domains, "volumes": volumes}


def small(name: str, **overrides: Any) -> VMSpec:
    spec = VMSpec(
        name=name,
        memory=256 * MIB,
        vcpus=1,
        disks=[DiskRequest(size=GIB), DiskRequest(size=GIB)],
        start=False,
    )
    for key, value in overrides.items():
        setattr(spec, key, value)
    return spec


def _template(conn: Connection) -> None:
    create_vm(conn, small("j-src"))
    clones.mark_template(conn, "j-src")


Setup = Callable[[Connection], None]
Operation = Callable[[Connection, LocalSteps], object]

# name -> (setup, operation, rolls forward once its first record is made)
OPERATIONS: dict[str, tuple[Setup, Operation]] = {
    "create": (lambda c: None, lambda c, s: create_vm(c, small("j-new"), steps=s)),
    "create-start": (
        lambda c: None,
        lambda c, s: create_vm(c, small("j-new", start=True), steps=s),
    ),
    "clone-full": (
        lambda c: create_vm(c, small("j-src")),
        lambda c, s: clones.clone_vm(c, "j-src", "j-copy", steps=s),
    ),
    "clone-linked": (
        _template,
        lambda c, s: clones.clone_vm(c, "j-src", "j-copy", linked=True, steps=s),
    ),
    "snapshot-internal": (
        lambda c: create_vm(c, small("j-vm")),
        lambda c, s: snapshots.create_snapshot(c, "j-vm", "s1", steps=s),
    ),
    "vm-delete": (
        lambda c: create_vm(c, small("j-vm", start=True)),
        lambda c, s: vms.delete(c, "j-vm", force=True, steps=s),
    ),
}


def _setup(conn: Connection, setup: Setup) -> None:
    ensure_pool(conn)  # the default pool is made on first use, like virt-install: not undone
    setup(conn)


def _full_run(name: str) -> tuple[int, dict[str, Any]]:
    """How many records the operation makes, and the state it leaves when it finishes.

    Run at collection, before any test opens its connection: test:///default connections
    opened while another is open share that one's simulated host.
    """
    setup, operation = OPERATIONS[name]
    with open_connection("test:///default") as conn:
        _setup(conn, setup)
        journal = CutSteps()
        operation(conn, journal)
        return journal.count, state(conn)


FULL_RUNS = {name: _full_run(name) for name in OPERATIONS}


def _record_count(name: str) -> int:
    return FULL_RUNS[name][0]


def _done_state(name: str) -> dict[str, Any]:
    return FULL_RUNS[name][1]


CASES = [
    (name, cut)
    for name in OPERATIONS
    for cut in range(1, _record_count(name) + 2)  # every record, then "finished, not marked"
]


@pytest.mark.parametrize(("name", "cut"), CASES, ids=[f"{n}-after-record-{c}" for n, c in CASES])
def test_cut_after_each_record_recovers_to_before_or_done(
    conn: Connection, name: str, cut: int
) -> None:
    setup, operation = OPERATIONS[name]
    _setup(conn, setup)
    before = state(conn)
    journal = CutSteps(cut)
    if cut <= _record_count(name):
        with pytest.raises(Cut):
            operation(conn, journal)
    else:
        operation(conn, journal)  # done, but killed before the journal heard so
    assert recover_elsewhere(conn, journal) == []
    after = state(conn)
    if journal.finish:  # past the point of no return: recovery finishes the operation
        assert after == _done_state(name)
    else:
        assert after == before
    # and recovering twice (killed during recovery) changes nothing more
    assert recover_elsewhere(conn, journal) == []
    assert state(conn) == after


def test_every_operation_records_before_it_acts() -> None:
    """The counts the parametrisation relies on: each step is announced."""
    assert _record_count("create") == 3  # two volumes, the definition
    assert _record_count("create-start") == 4  # ... and, once started, keep it
    assert _record_count("clone-full") == 3
    assert _record_count("snapshot-internal") == 1
    assert _record_count("vm-delete") == 1  # rolls forward from its first record


def test_a_failed_library_call_undoes_itself(conn: Connection) -> None:
    """Without a journal from the caller, the service undoes its own records."""
    ensure_pool(conn)
    before = state(conn)
    create_vm(conn, small("j-taken"))
    after_first = state(conn)
    spec = small("j-new", disks=[DiskRequest(size=GIB), DiskRequest(size=GIB, pool="nope")])
    with pytest.raises(Exception, match="nope"):
        create_vm(conn, spec)
    assert state(conn) == after_first != before


def test_undo_keeps_a_vm_of_the_same_name_made_after_the_crash(conn: Connection) -> None:
    journal = CutSteps(3)  # the definition's record: the VM exists, not yet announced done
    journal.cut_at = None
    create_vm(conn, small("j-new"), steps=journal)
    vms.delete(conn, "j-new")
    create_vm(conn, small("j-new"))  # someone else's VM, same name, new UUID
    mine = state(conn)
    problems = recover_elsewhere(conn, journal)
    assert state(conn) == mine, problems


def test_undo_keeps_a_volume_that_something_uses(conn: Connection) -> None:
    journal = CutSteps()
    create_vm(conn, small("j-new"), steps=journal)
    vms.delete(conn, "j-new", keep_disks=True)
    volume = journal.undo[0].args
    # someone attached the left-over volume to a VM of their own
    path = conn.virconn.storagePoolLookupByName(volume["pool"]).storageVolLookupByName(
        volume["name"]
    )
    create_vm(conn, small("j-other", disks=[DiskRequest(path=path.path())]))
    problems = recover_elsewhere(conn, journal)
    assert any("use(s) it now, so it is kept" in p for p in problems)
    assert volume["name"] in state(conn)["volumes"][volume["pool"]]


def test_undo_keeps_a_vm_kvmgr_did_not_make(conn: Connection) -> None:
    uuid = conn.virconn.lookupByName("test").UUIDString()  # the test driver's own VM
    with pytest.raises(InvalidState, match="no kvmgr record"):
        steps.ACTIONS["domain.undefine"](conn, {"uuid": uuid})
    assert vms.exists(conn, "test")


def test_a_fresh_process_knows_every_action() -> None:
    """Recovery runs in a process that never imported the services that recorded the steps."""
    code = "from kvmgr.services import steps; print(' '.join(sorted(steps.load_actions())))"
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    # every service module imported here: an action registered anywhere must be known there
    import importlib
    import pkgutil

    import kvmgr.services

    for module in pkgutil.walk_packages(kvmgr.services.__path__, "kvmgr.services."):
        importlib.import_module(module.name)

    ours = {name for name, func in steps.ACTIONS.items() if func.__module__.startswith("kvmgr.")}
    assert set(found) == ours  # (tests register actions of their own)
    assert {
        "volume.delete",
        "domain.undefine",
        "domain.keep",
        "vm.delete",
        "vm.forget_volumes",
        "snapshot.delete",
        "snapshot.settle_create",
        "snapshot.settle_revert",
        "snapshot.delete_external",
        "disk.detach",
        "disk.delete_volume",
    } <= set(found)
