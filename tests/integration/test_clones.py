"""Clones and templates against the real daemon, with real guests booting from the copies.

A source VM gets a marker on its disk, becomes a template, and gives a full clone, a linked
clone and a clone of a clone; each boots, gets its own DHCP lease and sees the marker, and the
template's disk stays byte for byte as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from kvmgr.connect import Connection
from kvmgr.errors import InvalidState, KvmgrError
from kvmgr.services import clones, vms
from kvmgr.services.create import DiskRequest, VMSpec, create_vm
from kvmgr.services.storage import find_volume_by_path
from kvmgr.units import GIB, MIB
from tests.integration.guest import GuestShell

pytestmark = pytest.mark.integration

SOURCE = "t-snap-src"
FULL, LINKED, SECOND = "t-snap-full", "t-snap-linked", "t-snap-c2c"


def _drop(conn: Connection, *names: str) -> None:
    for name in names:
        with contextlib.suppress(KvmgrError):
            vms.delete(conn, name, force=True)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _boot_and_read(conn: Connection, name: str) -> tuple[str, str]:
    """Start ``name``; return (its DHCP address, the marker on its disk)."""
    vms.start(conn, name)
    with GuestShell.open(conn, name) as shell:
        ip = shell.wait_ready()
        marker = shell.run("dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n 1").strip()
    vms.force_off(conn, name)
    return ip, marker


@pytest.fixture(scope="module")
def template(conn: Connection, iso: str) -> Iterator[str]:
    _drop(conn, SECOND, LINKED, FULL, SOURCE)
    spec = VMSpec(
        SOURCE,
        iso=iso,
        memory=256 * MIB,
        vcpus=1,
        disks=[DiskRequest(size=64 * MIB)],
        graphics="none",
        wait="ready",
    )
    create_vm(conn, spec)
    try:
        with GuestShell.open(conn, SOURCE) as shell:
            shell.wait_ready()
            shell.run(
                "echo SOURCE-MARK | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null"
            )
        vms.force_off(conn, SOURCE)
        yield SOURCE
    finally:
        _drop(conn, SECOND, LINKED, FULL, SOURCE)


def _disk(conn: Connection, name: str) -> str:
    spec = vms.definition(vms.lookup(conn, name), inactive=True)
    return next(d.source_path for d in spec.devices.disks if d.device == "disk")  # type: ignore[misc]


def _macs(conn: Connection, name: str) -> list[str | None]:
    return [nic.mac for nic in vms.definition(vms.lookup(conn, name)).devices.interfaces]


def test_full_linked_and_clone_of_clone(conn: Connection, template: str) -> None:
    source_disk = _disk(conn, template)
    before = _sha256(source_disk)
    with pytest.raises(InvalidState, match="template"):
        clones.clone_vm(conn, template, LINKED, linked=True)  # not yet a template

    full = clones.clone_vm(conn, template, FULL)
    assert full.volumes == [_disk(conn, FULL)] and full.volumes[0] != source_disk
    iso_paths = [d.source_path for d in vms.definition(vms.lookup(conn, FULL)).devices.disks]
    assert any(p and p.endswith(".iso") for p in iso_paths)  # the ISO is shared, not copied
    assert full.uuid != vms.lookup(conn, template).UUIDString()
    assert set(_macs(conn, FULL)).isdisjoint(_macs(conn, template))

    clones.mark_template(conn, template)
    with pytest.raises(InvalidState, match="template"):
        vms.start(conn, template)
    began = time.monotonic()
    linked = clones.clone_vm(conn, template, LINKED, linked=True)
    linked_seconds = time.monotonic() - began
    assert linked_seconds < 5
    second = clones.clone_vm(conn, LINKED, SECOND)  # a full clone of the linked clone

    ips = set()
    for name in (FULL, LINKED, SECOND):
        ip, marker = _boot_and_read(conn, name)
        assert marker == "SOURCE-MARK", name
        ips.add(ip)
    assert len(ips) == 3  # each clone got its own lease
    assert _sha256(source_disk) == before  # the source stayed byte for byte as it was

    with pytest.raises(InvalidState, match=LINKED):
        vms.delete(conn, template)
    with pytest.raises(InvalidState, match=LINKED):
        clones.mark_template(conn, template, template=False)
    assert linked.volumes == [_disk(conn, LINKED)]
    assert vms.delete(conn, SECOND) == second.volumes
    assert vms.delete(conn, LINKED) == linked.volumes
    assert find_volume_by_path(conn, source_disk) is not None
    assert _sha256(source_disk) == before
    assert vms.delete(conn, FULL) == full.volumes
    assert vms.delete(conn, template) == [source_disk]


# ----------------------------------------------------------------------------------- performance
PERF = "t-snap-perf"


def _allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def test_clone_speed_and_sparseness_on_4g_disk_with_1g_data(conn: Connection, iso: str) -> None:
    """Measured: linked clone writes < 1 MiB; full clone vs qemu-img convert, sparse copy."""
    _drop(conn, PERF + "-full", PERF + "-linked", PERF)
    spec = VMSpec(PERF, iso=iso, memory=256 * MIB, vcpus=1, disks=[DiskRequest(size=4 * GIB)])
    spec.start, spec.graphics = False, "none"
    create_vm(conn, spec)
    reference = "/var/lib/libvirt/images/t-snap-perf-reference.qcow2"
    try:
        disk = _disk(conn, PERF)
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1G", disk],
            check=True,
            capture_output=True,
        )
        clones.mark_template(conn, PERF)
        began = time.monotonic()
        linked = clones.clone_vm(conn, PERF, PERF + "-linked", linked=True)
        linked_s = time.monotonic() - began
        linked_bytes = _allocated(linked.volumes[0])

        began = time.monotonic()
        full = clones.clone_vm(conn, PERF, PERF + "-full")
        full_s = time.monotonic() - began
        full_bytes = _allocated(full.volumes[0])

        began = time.monotonic()
        subprocess.run(
            ["qemu-img", "convert", "-O", "qcow2", disk, reference],
            check=True,
            capture_output=True,
        )
        convert_s = time.monotonic() - began
        print(
            f"\nlinked clone {linked_s:.3f} s writing {linked_bytes} B; full clone {full_s:.2f} s "
            f"({full_bytes / MIB:.0f} MiB allocated); qemu-img convert {convert_s:.2f} s"
        )
        assert linked_bytes < MIB
        assert GIB <= full_bytes < 1.1 * GIB  # sparse: the 3 GiB never written stay holes
        assert full_s <= 1.2 * convert_s + 0.5  # 0.5 s: libvirt's define and RPC round trips
    finally:
        _drop(conn, PERF + "-full", PERF + "-linked", PERF)
        with contextlib.suppress(OSError):
            os.unlink(reference)
