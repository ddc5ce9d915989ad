"""Issue 11, hole 3, on the real daemon: ``vm off`` ends a hung QEMU, and an external snapshot
whose merge fails is still there (its record is dropped only after every merge).

The hung QEMU is one that never acts on SIGTERM: tests/integration/sigterm_jail.py ptraces its
main thread (the only one QEMU lets take signals) and swallows every SIGTERM, so only SIGKILL
ends it (a SIGSTOPped QEMU, tried first, is ended by libvirt without kvmgr's help either).

What this proves on the real daemon: ``vm off`` of a QEMU deaf to SIGTERM leaves the VM shut off,
ended by SIGKILL.  What it cannot prove here: that kvmgr's own fallback (graceful destroy failed,
then the plain one) is what did it.  libvirt 9.0's graceful destroy escalates by itself: measured
with the jail, SIGTERM at 0 s, SIGTERM again at 15.2 s, SIGKILL at 25.2 s, and the call returns
success (27.5 s), so this test passes with the fallback removed too (checked).  Libvirt documents
VIR_DOMAIN_DESTROY_GRACEFUL as SIGTERM only, and a daemon that keeps to that needs the fallback;
its branch is tested in tests/unit/test_safety_hole3.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kvmgr.connect import Connection
from kvmgr.errors import KvmgrError
from kvmgr.services import snapshots, vms
from kvmgr.services.create import DiskRequest, VMSpec, create_vm
from kvmgr.units import MIB

from .conftest import Cleanup

PREFIX = "t-hole3-"
JAIL = Path(__file__).with_name("sigterm_jail.py")


def test_vm_off_kills_a_qemu_that_ignores_sigterm(
    conn: Connection, cleanup: Cleanup, demo_iso: Path
) -> None:
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}deaf"
    spec = VMSpec(
        name, iso=str(demo_iso), memory=128 * MIB, vcpus=1, disks=[], nics=[], graphics="none"
    )
    create_vm(conn, spec)
    pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    jail = subprocess.Popen(
        [sys.executable, str(JAIL), str(pid)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert jail.stdout is not None
        assert jail.stdout.readline().strip() == "ready"
        began = time.monotonic()
        vms.force_off(conn, name)
        took = time.monotonic() - began
    finally:
        if jail.poll() is None:  # QEMU still alive: let it go, the cleanup destroys it
            jail.terminate()
        told, _ = jail.communicate(timeout=30)
    assert "swallowed SIGTERM" in told  # the graceful attempt reached QEMU and was ignored
    assert "killed by 9" in told, told  # what ended it was SIGKILL
    print(told)
    assert vms.state(conn, name) == "shut off"
    print(f"vm off of a QEMU deaf to SIGTERM took {took:.1f} s")


def test_external_snapshot_whose_merge_fails_keeps_its_record(
    conn: Connection, cleanup: Cleanup, monkeypatch: pytest.MonkeyPatch
) -> None:
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}merge"
    create_vm(
        conn,
        VMSpec(
            name,
            memory=128 * MIB,
            vcpus=1,
            disks=[DiskRequest(size=16 * MIB)],
            nics=[],
            graphics="none",
            start=False,
        ),
    )
    snapshots.create_snapshot(conn, name, "s1", disk_only=True)
    snapshots.create_snapshot(conn, name, "s2", disk_only=True)  # s1's image merges offline
    real = subprocess.run

    def commit_fails(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        if argv[:2] == ["qemu-img", "commit"]:
            return subprocess.CompletedProcess(argv, 1, "", "injected: no space left on device")
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", commit_fails)
    with pytest.raises(KvmgrError, match="no space left"):
        snapshots.delete_snapshot(conn, name, "s1")
    # before: the record went first, so the snapshot was gone though its data was never merged
    assert [s.name for s in snapshots.list_snapshots(conn, name)] == ["s1", "s2"]
    monkeypatch.undo()
    assert snapshots.delete_snapshot(conn, name, "s1") == ["s1"]  # deleting again finishes it
    assert [s.name for s in snapshots.list_snapshots(conn, name)] == ["s2"]
    snapshots.revert_snapshot(conn, name, "s2")  # what is left still works
