"""kill -9 of the CLI at every journaled step, on the real daemon, then recovery by another process.

Each case runs a ``kvmgr`` command as a subprocess with ``KVMGR_TEST_CRASH_AFTER=N`` (SIGKILL
right after its N-th journal record is committed, before that step acts) or ``N+`` (right after
the step acted: at the next record, or before the operation is marked done).  Then a second
process, ``kvmgr ops recover``, must leave exactly the state from before the command, or (past the
operation's point of no return) exactly the state the command leaves when it is not killed: no
domain, volume or snapshot that was not there, and the original intact.

Shut-off VMs and 16 MiB volumes: no guest boots.  The database is the session's SQLite file
(tests/conftest.py), shared by the killed process and the recovering one.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from kvmgr.connect import Connection
from kvmgr.services import snapshots
from kvmgr.services.create import DiskRequest, VMSpec, create_vm
from kvmgr.services.steps import CRASH_ENV
from kvmgr.units import MIB
from tests.steps_harness import libvirt_state

from .conftest import Cleanup, purge_prefix

PREFIX = "t-kill9-"
VM = f"{PREFIX}vm"
KVMGR = [sys.executable, "-m", "kvmgr.cli.main", "-c", "qemu:///system"]


def kvmgr(*args: str, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    env.pop(CRASH_ENV, None)
    if crash is not None:
        env[CRASH_ENV] = crash
    return subprocess.run(
        [*KVMGR, *args], capture_output=True, text=True, timeout=300, check=False, env=env
    )


def _vm(conn: Connection, disks: int = 1) -> None:
    create_vm(
        conn,
        VMSpec(
            VM,
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


SMALL = ("--memory", "128M", "--vcpus", "1", "--network", "none", "--graphics", "none")
# name -> (setup, command, journal records it makes)
OPERATIONS: dict[str, tuple[Callable[[Connection], None], tuple[str, ...], int]] = {
    "vm-create": (
        lambda c: None,
        ("vm", "create", VM, "--disk", "16M", "--disk", "16M", "--no-start", *SMALL),
        3,
    ),
    "vm-clone": (_vm, ("vm", "clone", VM, f"{PREFIX}copy"), 2),
    "snap-create-internal": (_vm, ("snap", "create", VM, "s1"), 1),
    "snap-create-external": (_vm, ("snap", "create", VM, "s1", "--disk-only"), 3),
    "snap-revert-external": (
        lambda c: _with_external(c, "s1", "s2"),
        ("snap", "revert", VM, "s1"),
        3,
    ),
    "snap-delete-external": (
        lambda c: _with_external(c, "s1", "s2"),
        ("snap", "delete", VM, "s1"),
        1,
    ),
    "disk-add": (_vm, ("vm", "disk", "add", VM, "--size", "16M"), 3),
    "disk-remove": (
        lambda c: _vm(c, disks=2),
        ("vm", "disk", "remove", VM, "vdb", "--delete-volume"),
        1,
    ),
    "vm-delete": (lambda c: _with_external(c, "s1"), ("vm", "delete", VM), 1),
}
# Killed after each record (step N-1 acted, step N not yet), and after the last step acted.
# ("N+" for a middle N leaves libvirt as "N+1" does; the in-process tests cover both journals.)
CASES = [
    (name, crash)
    for name, (_setup, _command, records) in OPERATIONS.items()
    for crash in [*(str(n) for n in range(1, records + 1)), f"{records}+"]
]

_DONE: dict[str, dict[str, Any]] = {}


def _done_state(conn: Connection, name: str) -> dict[str, Any]:
    """The state the command leaves when nobody kills it (one run per operation)."""
    if name not in _DONE:
        setup, command, _records = OPERATIONS[name]
        purge_prefix(conn, PREFIX)
        setup(conn)
        done = kvmgr(*command)
        assert done.returncode == 0, done.stderr
        _DONE[name] = libvirt_state(conn, PREFIX)
        purge_prefix(conn, PREFIX)
    return _DONE[name]


@pytest.mark.parametrize(("name", "crash"), CASES, ids=[f"{n}-killed-at-{c}" for n, c in CASES])
def test_kill9_at_each_step_then_recovery_leaves_no_orphans(
    conn: Connection, cleanup: Cleanup, name: str, crash: str
) -> None:
    cleanup.prefix(PREFIX)
    done = _done_state(conn, name)
    setup, command, _records = OPERATIONS[name]
    setup(conn)
    before = libvirt_state(conn, PREFIX)
    killed = kvmgr(*command, crash=crash)
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    recovered = kvmgr("ops", "recover")
    assert recovered.returncode == 0, recovered.stderr
    assert "undone:" in recovered.stdout or "recovered:" in recovered.stdout, recovered.stdout
    assert "recovery-failed" not in recovered.stdout, recovered.stdout
    after = libvirt_state(conn, PREFIX)
    assert after in (before, done), recovered.stdout
