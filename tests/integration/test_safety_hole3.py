"""Issue 11, hole 3, on the real daemon: ``vm off`` ends a hung QEMU, and an external snapshot
whose merge fails is still there (its record is dropped only after every merge).

The hung QEMU here is a stopped one: libvirt 9.0's graceful destroy ends even that (measured
~27 s), so this test also passed before the escalation; the escalation itself (graceful destroy
failing, then the plain one that sends SIGKILL) is tested in tests/unit/test_safety_hole3.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
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


def test_vm_off_kills_a_qemu_that_ignores_sigterm(
    conn: Connection, cleanup: Cleanup, demo_iso: Path
) -> None:
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}hung"
    spec = VMSpec(
        name, iso=str(demo_iso), memory=128 * MIB, vcpus=1, disks=[], nics=[], graphics="none"
    )
    create_vm(conn, spec)
    pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    os.kill(pid, signal.SIGSTOP)  # a stopped process keeps SIGTERM pending: QEMU never exits
    try:
        began = time.monotonic()
        vms.force_off(conn, name)
        took = time.monotonic() - began
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGCONT)
    assert vms.state(conn, name) == "shut off"
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text()
    print(f"vm off of a SIGSTOPped QEMU took {took:.1f} s")


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
