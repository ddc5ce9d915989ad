"""Live changes seen from inside a real guest (qemu:///system, demo ISO, software emulation).

One guest, ``t-cfg-live`` (1 of max 2 vCPUs, 256 of max 512 MiB, a 64 MiB disk, a NIC on
``default``), is booted once for the module; the tests run in file order and each leaves the
guest as it found it.  The guest's init onlines hot-plugged CPUs itself; its shell on the serial
console tells what the guest sees.  Traffic: none beyond the guest's own DHCP on ``default``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, KvmgrError
from kvmgr.services import resources, stats, vms
from kvmgr.services.create import DiskRequest, VMSpec, create_vm
from kvmgr.services.storage import find_volume_by_path
from kvmgr.units import MIB
from tests.integration.guest import GuestShell, eventually, guest_cpus, guest_mem_total_kib

pytestmark = pytest.mark.integration

VM = "t-cfg-live"


def _remove_vm(conn: Connection, name: str) -> None:
    with contextlib.suppress(KvmgrError):
        vms.delete(conn, name, force=True)


@pytest.fixture(scope="module")
def guest(conn: Connection, iso: str) -> Iterator[GuestShell]:
    _remove_vm(conn, VM)  # a previous run killed half way
    spec = VMSpec(
        name=VM,
        iso=iso,
        memory=256 * MIB,
        max_memory=512 * MIB,
        vcpus=1,
        max_vcpus=2,
        disks=[DiskRequest(size=64 * MIB)],
        graphics="none",
        wait="ready",
        wait_timeout=240,
    )
    try:
        create_vm(conn, spec)
        with GuestShell.open(conn, VM) as shell:
            shell.wait_ready()
            yield shell
    finally:
        _remove_vm(conn, VM)


def _block_devices(shell: GuestShell) -> set[str]:
    return set(shell.run("ls /sys/block").split())


def _nics(shell: GuestShell) -> set[str]:
    return set(shell.run("ls /sys/class/net").split()) - {"lo"}


# ----------------------------------------------------------------------------- vCPUs, memory
def test_vcpu_hotplug_is_seen_in_the_guest(conn: Connection, guest: GuestShell) -> None:
    assert guest_cpus(guest) == 1
    result = resources.set_resources(conn, VM, vcpus=2)
    assert (result.vcpus_live, result.vcpus_config) == (2, 2)
    assert eventually(lambda: guest_cpus(guest) == 2), "the guest never showed a second CPU"
    with pytest.raises(InvalidInput, match="maximum of 2") as caught:
        resources.set_resources(conn, VM, vcpus=3)
    assert "--max-vcpus" in (caught.value.hint or "")


def test_memory_balloon_is_seen_in_the_guest(conn: Connection, guest: GuestShell) -> None:
    before = guest_mem_total_kib(guest)
    result = resources.set_resources(conn, VM, memory=384 * MIB)
    assert result.memory_config == 384 * MIB
    # The balloon gives back 128 MiB; the guest's MemTotal grows by (nearly) that much.
    assert eventually(lambda: guest_mem_total_kib(guest) - before >= 120 * 1024), (
        f"MemTotal stayed near {before} kB"
    )
    resources.set_resources(conn, VM, memory=256 * MIB)
    assert eventually(lambda: guest_mem_total_kib(guest) <= before + 8 * 1024)
    with pytest.raises(InvalidInput, match="ceiling of 512 MiB"):
        resources.set_resources(conn, VM, memory=600 * MIB)


# ----------------------------------------------------------------------------- disks
def test_disk_add_resize_and_remove_are_seen_in_the_guest(
    conn: Connection, guest: GuestShell
) -> None:
    assert "vdb" not in _block_devices(guest)
    added = resources.add_disk(conn, VM, size=32 * MIB)
    path = added.path
    assert (added.target, added.owned, added.scope) == ("vdb", True, "live and config")
    try:
        assert eventually(lambda: "vdb" in _block_devices(guest), 30), "vdb never appeared"
        meta = vms.definition(conn.virconn.lookupByName(VM), inactive=True).kvmgr_metadata()
        assert meta is not None and path in meta.owned_volumes

        grown = resources.resize_disk(conn, VM, "vdb", 48 * MIB)
        assert grown.capacity == 48 * MIB
        assert eventually(lambda: int(guest.run("cat /sys/block/vdb/size")) * 512 == 48 * MIB, 20)
        with pytest.raises(InvalidInput, match="does not shrink"):
            resources.resize_disk(conn, VM, "vdb", 32 * MIB)

        removed = resources.remove_disk(conn, VM, "vdb", delete_volume=True)
        assert removed.volume_deleted
        assert "vdb" not in _block_devices(guest)
        assert find_volume_by_path(conn, path or "") is None
        dom = conn.virconn.lookupByName(VM)
        spec = vms.definition(dom, inactive=True)
        assert "vdb" not in [disk.target_dev for disk in spec.devices.disks]
        assert path not in (spec.kvmgr_metadata() or spec.kvmgr_metadata(create=True)).owned_volumes
    finally:
        if path and find_volume_by_path(conn, path) is not None:
            with contextlib.suppress(KvmgrError):
                resources.remove_disk(conn, VM, "vdb", delete_volume=True)


def test_a_disk_kvmgr_did_not_make_is_never_deleted(conn: Connection, guest: GuestShell) -> None:
    cdrom = next(d["target"] for d in vms.vm_info(conn, VM)["disks"] if d["device"] == "cdrom")
    with pytest.raises(InvalidInput, match="not created by kvmgr"):
        resources.remove_disk(conn, VM, cdrom, delete_volume=True)  # the demo ISO


# ----------------------------------------------------------------------------- NICs
def test_nic_add_and_remove_are_seen_in_the_guest(conn: Connection, guest: GuestShell) -> None:
    before = _nics(guest)
    added = resources.add_nic(conn, VM, network="default")
    try:
        assert added.model == "virtio" and added.mac.startswith("52:54:00:")
        assert eventually(lambda: len(_nics(guest)) == len(before) + 1, 30)
        new = (_nics(guest) - before).pop()
        assert guest.run(f"cat /sys/class/net/{new}/address").strip() == added.mac
        resources.remove_nic(conn, VM, added.mac)
        assert _nics(guest) == before
        dom = conn.virconn.lookupByName(VM)
        for inactive in (False, True):
            macs = [n.mac for n in vms.definition(dom, inactive=inactive).devices.interfaces]
            assert added.mac not in macs
    finally:
        with contextlib.suppress(KvmgrError):
            resources.remove_nic(conn, VM, added.mac)


# ----------------------------------------------------------------------------- ip, stats
def test_ip_names_the_source_that_answered(conn: Connection, guest: GuestShell) -> None:
    found = resources.addresses(conn, VM)
    assert {"ip": guest.ip, "source": "lease"}.items() <= found[0].items()


def test_stats_of_a_running_guest_show_cpu_memory_and_traffic(
    conn: Connection, guest: GuestShell
) -> None:
    # Some work in the guest during the interval: CPU, and reads from its disk.
    guest.session.write(b"dd if=/dev/vda of=/dev/null bs=64k 2>/dev/null; sleep 1\r")
    (rates,) = stats.sample_rates(conn, [VM], interval=2.0)
    guest.session.drain(0.5)
    assert rates.state == "running" and rates.vcpus == 2
    assert rates.cpu_percent is not None and rates.cpu_percent > 0
    assert rates.memory_total is not None and rates.memory_total > 128 * MIB
    assert rates.disk_read_bps is not None and rates.net_rx_bps is not None
    all_vms = {item.name: item for item in stats.sample_rates(conn, interval=1.0)}
    assert VM in all_vms
    print(f"measured: {rates}")  # shown with -s; the numbers in the report come from here
