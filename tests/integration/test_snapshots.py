"""Snapshots against the real daemon (qemu:///system), with real guests where data matters.

Markers go straight to the guest's /dev/vda (the demo guest runs from RAM, so the disk is a raw
block device to it): write A, snapshot, write B, revert, read A back.  The tree semantics of
external snapshots are checked without a guest: qemu-io writes markers into the VM's current
image while it is shut off, which is fast and reads exactly what a guest would read.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.errors import InvalidState, KvmgrError
from kvmgr.services import snapshots, vms
from kvmgr.services.create import DiskRequest, VMSpec, create_vm
from kvmgr.services.storage import find_volume_by_path
from kvmgr.units import MIB
from tests.integration.guest import GuestShell

pytestmark = pytest.mark.integration

GUEST = "t-snap-guest"
OFFLINE = "t-snap-tree"


def _drop(conn: Connection, name: str) -> None:
    with contextlib.suppress(KvmgrError):
        vms.delete(conn, name, force=True)


def _spec(name: str, iso: str, *, start: bool = True) -> VMSpec:
    return VMSpec(
        name,
        iso=iso,
        memory=256 * MIB,
        vcpus=1,
        disks=[DiskRequest(size=64 * MIB)],
        graphics="none",
        wait="ready" if start else "none",
        start=start,
    )


@pytest.fixture(scope="module")
def guest(conn: Connection, iso: str) -> Iterator[str]:
    _drop(conn, GUEST)
    create_vm(conn, _spec(GUEST, iso))
    try:
        yield GUEST
    finally:
        _drop(conn, GUEST)


# ----------------------------------------------------------------------------------- guest I/O
def _write(conn: Connection, name: str, marker: str) -> None:
    with GuestShell.open(conn, name) as shell:
        shell.wait_ready()
        shell.run(
            f"echo {marker} | dd of=/dev/vda bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null"
        )
        shell.run("sync")


def _read(conn: Connection, name: str) -> str:
    with GuestShell.open(conn, name) as shell:
        shell.wait_ready()
        shell.run("sync; echo 3 > /proc/sys/vm/drop_caches")
        return shell.run("dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n 1").strip()


def _off(conn: Connection, name: str) -> None:
    if vms.is_active_state(vms.state_of(vms.lookup(conn, name))):
        vms.force_off(conn, name)


def _start(conn: Connection, name: str) -> None:
    vms.start(conn, name)


def _files(conn: Connection, name: str) -> list[str]:
    return snapshots.owned_volumes(vms.lookup(conn, name))


# ----------------------------------------------------------------------------------- guests
def test_offline_internal_snapshot_reverts_disk(conn: Connection, guest: str) -> None:
    _write(conn, guest, "MARK-A")
    _off(conn, guest)
    info = snapshots.create_snapshot(conn, guest, "off-a")
    assert info.kind == "internal" and info.state == "shutoff" and not info.memory
    _start(conn, guest)
    _write(conn, guest, "MARK-B")
    assert _read(conn, guest) == "MARK-B"
    with pytest.raises(InvalidState, match="--force"):
        snapshots.revert_snapshot(conn, guest, "off-a")
    snapshots.revert_snapshot(conn, guest, "off-a", force=True)
    assert vms.state(conn, guest) == "shut off"  # the snapshot's state
    _start(conn, guest)
    assert _read(conn, guest) == "MARK-A"
    snapshots.delete_snapshot(conn, guest, "off-a")


def test_live_internal_snapshot_restores_memory_and_disk(conn: Connection, guest: str) -> None:
    _write(conn, guest, "LIVE-A")
    info = snapshots.create_snapshot(conn, guest, "live-a", live=True)
    assert info.kind == "internal" and info.memory and info.state == "running"
    _write(conn, guest, "LIVE-B")
    snapshots.revert_snapshot(conn, guest, "live-a", force=True)
    assert vms.state(conn, guest) == "running"
    assert _read(conn, guest) == "LIVE-A"
    with pytest.raises(InvalidState, match="internal snapshots"):
        snapshots.create_snapshot(conn, guest, "mixed", disk_only=True)
    snapshots.delete_snapshot(conn, guest, "live-a")


def test_external_disk_only_live_revert_and_live_merges(conn: Connection, guest: str) -> None:
    base = _files(conn, guest)
    _write(conn, guest, "EXT-A")
    info = snapshots.create_snapshot(conn, guest, "ext-a", disk_only=True)
    assert info.kind == "external" and info.state == "disk-snapshot"
    assert len(_files(conn, guest)) == len(base) + 1  # the overlay is the VM's own now
    _write(conn, guest, "EXT-B")
    snapshots.revert_snapshot(conn, guest, "ext-a", force=True)
    assert vms.state(conn, guest) == "shut off"
    _start(conn, guest)
    assert _read(conn, guest) == "EXT-A"
    # a second snapshot, deleted while the VM runs on its overlay: active block commit
    snapshots.create_snapshot(conn, guest, "ext-c", disk_only=True)
    _write(conn, guest, "EXT-D")
    snapshots.delete_snapshot(conn, guest, "ext-c")
    assert _read(conn, guest) == "EXT-D"
    snapshots.delete_snapshot(conn, guest, "ext-a")
    assert _read(conn, guest) == "EXT-D"
    # everything merged back into the disk the VM was created with; no overlay is left over
    assert _files(conn, guest) == base
    disk = [d for d in vms.definition(vms.lookup(conn, guest)).devices.disks if d.device == "disk"]
    assert disk[0].source_path == base[0]


# ----------------------------------------------------------------------------------- offline tree
@pytest.fixture
def offline_vm(conn: Connection, iso: str) -> Iterator[str]:
    _drop(conn, OFFLINE)
    create_vm(conn, _spec(OFFLINE, iso, start=False))
    try:
        yield OFFLINE
    finally:
        _drop(conn, OFFLINE)


def _active_image(conn: Connection, name: str) -> str:
    spec = vms.definition(vms.lookup(conn, name), inactive=True)
    return next(d.source_path for d in spec.devices.disks if d.target_dev == "vda")  # type: ignore[misc]


def _qwrite(conn: Connection, name: str, char: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {ord(char)} 0 4k", _active_image(conn, name)],
        check=True,
        capture_output=True,
    )


def _qread(conn: Connection, name: str) -> str:
    image = _active_image(conn, name)
    for char in "ABCDEFGH":
        out = subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"read -P {ord(char)} 0 4k", image],
            capture_output=True,
            text=True,
            check=False,  # a pattern mismatch exits 1; an unreadable image says so below
        )
        if "Could not open" in out.stderr:
            raise AssertionError(out.stderr)
        if out.returncode == 0 and "verification failed" not in out.stdout:
            return char
    return "?"


def test_external_tree_branches_delete_middle_and_cleanup(
    conn: Connection, offline_vm: str
) -> None:
    vm = offline_vm
    original = _files(conn, vm)
    _qwrite(conn, vm, "A")
    snapshots.create_snapshot(conn, vm, "s1", disk_only=True)
    _qwrite(conn, vm, "B")
    snapshots.create_snapshot(conn, vm, "s2", disk_only=True)
    _qwrite(conn, vm, "C")
    snapshots.revert_snapshot(conn, vm, "s1")
    assert _qread(conn, vm) == "A"
    _qwrite(conn, vm, "D")
    snapshots.create_snapshot(conn, vm, "s3", disk_only=True)  # a second branch under s1
    _qwrite(conn, vm, "E")
    tree = [(i.depth, i.name) for i in snapshots.list_snapshots(conn, vm)]
    assert tree[0] == (0, "s1") and sorted(tree[1:]) == [(1, "s2"), (1, "s3")]
    assert [i.name for i in snapshots.list_snapshots(conn, vm) if i.current] == ["s3"]

    # delete the middle of the tree: both branches stay revertible to their own state
    snapshots.delete_snapshot(conn, vm, "s1")
    assert {i.name: i.parent for i in snapshots.list_snapshots(conn, vm)} == {
        "s2": None,
        "s3": None,
    }
    snapshots.revert_snapshot(conn, vm, "s2")
    assert _qread(conn, vm) == "B"
    snapshots.revert_snapshot(conn, vm, "s3")
    assert _qread(conn, vm) == "D"
    _qwrite(conn, vm, "F")
    # s3's frozen image has one overlay on it: deleting s3 merges, the current data stays
    snapshots.delete_snapshot(conn, vm, "s3")
    assert _qread(conn, vm) == "F"
    snapshots.revert_snapshot(conn, vm, "s2")
    assert _qread(conn, vm) == "B"
    snapshots.delete_snapshot(conn, vm, "s2")
    assert _qread(conn, vm) == "B"
    assert snapshots.list_snapshots(conn, vm) == []
    # every file still owned is there; every file made and no longer needed is gone
    owned = _files(conn, vm)
    assert original[0] in owned
    for path in owned:
        assert find_volume_by_path(conn, path) is not None
    removed = vms.delete(conn, vm)
    assert sorted(removed) == sorted(owned)
    for path in owned:
        assert find_volume_by_path(conn, path) is None


def test_delete_with_children_keeps_current_data(conn: Connection, offline_vm: str) -> None:
    vm = offline_vm
    _qwrite(conn, vm, "A")
    snapshots.create_snapshot(conn, vm, "p", disk_only=True)
    _qwrite(conn, vm, "B")
    snapshots.create_snapshot(conn, vm, "c", disk_only=True)
    _qwrite(conn, vm, "C")
    assert snapshots.delete_snapshot(conn, vm, "p", children=True) == ["c", "p"]
    assert _qread(conn, vm) == "C"
    assert _files(conn, vm) == [_active_image(conn, vm)]  # merged down to the original disk


def test_raw_disk_internal_refused_with_hint(conn: Connection, iso: str) -> None:
    name = "t-snap-raw"
    _drop(conn, name)
    spec = _spec(name, iso, start=False)
    spec.disks = [DiskRequest(size=16 * MIB, format="raw")]
    create_vm(conn, spec)
    try:
        with pytest.raises(KvmgrError, match="--disk-only"):
            snapshots.create_snapshot(conn, name, "s")
        assert snapshots.create_snapshot(conn, name, "s", disk_only=True).kind == "external"
        snapshots.revert_snapshot(conn, name, "s")
    finally:
        _drop(conn, name)
    with pytest.raises(libvirt.libvirtError):
        conn.virconn.lookupByName(name)
