"""Backups against the real daemon with a real guest: full, incremental (also across a shutdown),
restore of every point into a new VM, verify, and a backup killed with SIGKILL mid-way.

The guest writes random blocks and hashes its disk (tests/integration/backup_guest.py); each
restored disk must hash the same (read through libvirt and qemu-img, and, for the last point,
from the restored VM booted).  Everything goes through the control plane (catalog, leases,
journal) on a throw-away SQLite store.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.control.backups import Backups
from kvmgr.control.plane import ControlPlane
from kvmgr.errors import KvmgrError
from kvmgr.services import vms
from kvmgr.services.create import DiskRequest, VMSpec, create_vm
from kvmgr.store.db import Store
from kvmgr.units import MIB
from tests.integration.backup_guest import guest_hash, image_hash, write_blocks
from tests.integration.guest import GuestShell

pytestmark = pytest.mark.integration

PREFIX = "t-bk-"
GUEST = f"{PREFIX}guest"
KILLED = f"{PREFIX}kill"


def _drop(conn: Connection, name: str) -> None:
    with contextlib.suppress(KvmgrError):
        vms.delete(conn, name, force=True)


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('bk-db') / 'kvmgr.db'}"


@pytest.fixture(scope="module")
def backups(
    conn: Connection, db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backups]:
    store = Store(db_url)
    plane = ControlPlane(store, "test:backups", lambda _host: conn)
    face = Backups(plane)
    face.add_repo("main", str(tmp_path_factory.mktemp("bk-repo") / "repo"))
    yield face
    store.dispose()


@pytest.fixture(scope="module")
def guest(conn: Connection, iso: str, module_cleanup: object) -> Iterator[str]:
    module_cleanup.prefix(PREFIX)  # type: ignore[attr-defined]
    spec = VMSpec(
        GUEST,
        iso=iso,
        memory=256 * MIB,
        vcpus=1,
        disks=[DiskRequest(size=64 * MIB)],
        graphics="none",
        wait="ready",
    )
    create_vm(conn, spec)
    yield GUEST
    _drop(conn, GUEST)


def test_full_incremental_across_shutdown_and_restore_each_point(
    conn: Connection, backups: Backups, guest: str, tmp_path: Path
) -> None:
    hashes: list[str] = []
    points: list[dict[str, object]] = []
    hashes.append(write_blocks(conn, guest, [1, 7, 30]))
    points.append(backups.create("local", guest))
    hashes.append(write_blocks(conn, guest, [2, 50]))
    points.append(backups.create("local", guest))
    vms.force_off(conn, guest)  # data is fsync'ed: a hard stop loses nothing
    vms.start(conn, guest)
    hashes.append(write_blocks(conn, guest, [3, 60]))
    points.append(backups.create("local", guest))

    assert [p["kind"] for p in points] == ["full", "incremental", "incremental"]
    # an incremental reads what changed: 2 blocks of 256 KiB, not the 64 MiB disk
    assert points[1]["bytes_read"] == 2 * 256 * 1024
    assert points[2]["bytes_read"] == 2 * 256 * 1024
    dom = vms.lookup(conn, guest)
    assert [cp.getName() for cp in dom.listAllCheckpoints(0)] == [f"kvmgr-{points[2]['id']}"]

    listed = backups.points(guest)
    assert [row["id"] for row in listed] == [p["id"] for p in points]
    assert all(row["state"] == "good" and row["consistency"] == "crash" for row in listed)
    assert all(verdict["ok"] for verdict in backups.verify())

    for number, (point, expected) in enumerate(zip(points, hashes, strict=True)):
        restored = backups.restore("local", str(point["id"]), as_name=f"{PREFIX}r{number}")
        assert restored["in_place"] is False  # the original still exists: new UUID and MACs
        assert image_hash(conn, restored["disks"]["vda"], tmp_path) == expected, point["id"]
    # the last restored VM boots, and its guest sees the data of that point
    vms.start(conn, f"{PREFIX}r2")
    with GuestShell.open(conn, f"{PREFIX}r2") as shell:
        shell.wait_ready()
        assert guest_hash(shell) == hashes[2]
    # a restore never overwrites: the name is taken now
    with pytest.raises(KvmgrError, match="exists"):
        backups.restore("local", str(points[0]["id"]), as_name=f"{PREFIX}r2")


def _offline_vm(conn: Connection, iso: str) -> str:
    _drop(conn, KILLED)
    spec = VMSpec(
        KILLED,
        iso=iso,
        memory=128 * MIB,
        vcpus=1,
        disks=[DiskRequest(size=1024 * MIB)],
        graphics="none",
        start=False,
        wait="none",
    )
    create_vm(conn, spec)
    path = vms.definition(vms.lookup(conn, KILLED)).devices.disks[0].source_path
    assert path
    # 768 MiB of data, so the copy lasts long enough to be killed in the middle of it
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 768M", path],
        check=True,
        capture_output=True,
    )
    return KILLED


def _backup_job_running(dom: libvirt.virDomain) -> bool:
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            return dom.jobStats(0).get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP
    return False


def test_killed_backup_leaves_nothing_after_recovery(
    conn: Connection, backups: Backups, db_url: str, iso: str, module_cleanup: object
) -> None:
    module_cleanup.prefix(PREFIX)  # type: ignore[attr-defined]
    name = _offline_vm(conn, iso)
    dom = vms.lookup(conn, name)
    scratch_before = set(glob.glob("/var/tmp/kvmgr-backup-*"))
    env = {**os.environ, "KVMGR_DB_URL": db_url, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-m", "kvmgr.cli.main", "backup", "create", name],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not _backup_job_running(dom):
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        assert time.monotonic() < deadline, "the backup job never started"
        time.sleep(0.02)
    time.sleep(0.3)  # into the copy
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert _backup_job_running(dom)  # the wreckage is there before recovery

    # recovered by a fresh process that never imported the backup service itself
    recovered = subprocess.run(
        [sys.executable, "-m", "kvmgr.cli.main", "ops", "recover"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"backup {name}" in recovered.stdout, recovered.stdout + recovered.stderr
    assert "undone" in recovered.stdout, recovered.stdout
    assert not _backup_job_running(dom)
    assert not dom.isActive()  # it was shut off; the paused start is undone
    assert dom.listAllCheckpoints(0) == []
    assert set(glob.glob("/var/tmp/kvmgr-backup-*")) == scratch_before
    _, repo = backups.repository()
    assert not any(entry.name.startswith(".") for entry in repo.points.iterdir())
    assert [row for row in backups.points(name) if row["state"] == "good"] == []

    point = backups.create("local", name)  # and the next backup works: full, whole, verified
    assert point["kind"] == "full"
    assert point["bytes_read"] == 768 * MIB
    assert backups.verify(str(point["id"]))[0]["ok"]
