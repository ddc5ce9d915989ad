"""The demo flow end to end on qemu:///system: build the ISO, boot it, reach its shell, see DHCP.

One guest is booted per module and shared by the tests, because a boot under software emulation
costs seconds.  Boot-to-ready time is measured and printed (``-s`` or the junit properties).
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.images.demo_iso import VOLUME_ID, build_demo_iso, remove_demo_iso
from kvmgr.services import storage, storage_pools
from kvmgr.services.console import attach_interactive
from kvmgr.units import MIB
from tests.integration.conftest import Cleanup
from tests.integration.guest import GuestShell, demo_domain, eventually

PREFIX = "t-infra-"
VM = f"{PREFIX}demo"
DISK = f"{PREFIX}demo-disk.qcow2"


@dataclass
class BootedGuest:
    dom: libvirt.virDomain
    shell: GuestShell
    ip: str
    boot_to_ready: float


@pytest.fixture(scope="module")
def guest(conn: Connection, demo_iso: Path, module_cleanup: Cleanup) -> Iterator[BootedGuest]:
    module_cleanup.prefix(PREFIX)
    storage_pools.ensure_pool(conn, "default")
    disk = storage.create_volume(conn, "default", module_cleanup.volume("default", DISK), 64 * MIB)
    spec = demo_domain(
        conn, module_cleanup.vm(VM), str(demo_iso), disk_path=disk.path, vcpus=1, max_vcpus=2
    )
    xml = spec.to_xml()
    dom = conn.virconn.defineXML(xml)
    started = time.monotonic()
    dom.create()
    shell = GuestShell.open(conn, VM)
    try:
        ip = shell.wait_ready(timeout=180)
        elapsed = time.monotonic() - started
        kind = conn.domain_type().domain_type
        print(f"\ndemo guest boot-to-ready: {elapsed:.1f} s (domain type {kind})")
        yield BootedGuest(dom, shell, ip, elapsed)
    finally:
        shell.close()


def test_guest_reports_ready_with_an_address_of_the_default_network(guest: BootedGuest) -> None:
    assert re.fullmatch(r"192\.168\.122\.\d+", guest.ip)
    assert guest.boot_to_ready < 180


def test_lease_is_visible_through_libvirt(conn: Connection, guest: BootedGuest) -> None:
    mac = _mac_of(guest.dom)
    leases = conn.virconn.networkLookupByName("default").DHCPLeases(mac)
    assert [lease["ipaddr"] for lease in leases] == [guest.ip]


def test_shell_runs_commands_and_reports_exit_status(guest: BootedGuest) -> None:
    assert guest.shell.run("echo hello from $(hostname)") == "hello from kvmgr-demo"
    status, _ = guest.shell.run_status("false")
    assert status == 1
    assert guest.shell.run("cat /proc/cmdline").endswith("console=ttyS0,115200 quiet")


def test_guest_writes_and_reads_back_its_virtio_disk(guest: BootedGuest) -> None:
    size = int(guest.shell.run("cat /sys/block/vda/size")) * 512
    assert size == 64 * MIB
    guest.shell.run("echo kvmgr-disk-check | dd of=/dev/vda bs=512 conv=fsync 2>/dev/null")
    guest.shell.run("echo 3 > /proc/sys/vm/drop_caches")
    assert guest.shell.run("head -c 16 /dev/vda") == "kvmgr-disk-check"


def test_guest_reaches_the_host_side_of_its_network(guest: BootedGuest) -> None:
    # 192.168.122.1 is virbr0 on the host, inside the run's own libvirt network.
    assert "0% packet loss" in guest.shell.run("ping -c 1 -W 5 192.168.122.1")


def test_late_console_catches_up_with_the_markers(conn: Connection, guest: BootedGuest) -> None:
    """A console opened after boot still learns the IP (FORCE takes the console over)."""
    with GuestShell.open(conn, VM) as late:
        assert late.wait_ready(timeout=30) == guest.ip
    # The module's shell lost the console to ``late``; reattach it for the tests that follow.
    _reattach(conn, guest)


def test_interactive_console_passes_keys_and_ends_on_escape(
    conn: Connection, guest: BootedGuest
) -> None:
    """``kvmgr vm console``'s engine: typed bytes reach the guest, output comes back, ^] ends."""
    keys_read, keys_write = os.pipe()
    out_read, out_write = os.pipe()
    os.write(keys_write, b"echo attach-$((6*7))\r")
    with open(keys_read, "rb", buffering=0) as stdin, open(out_write, "wb", buffering=0) as stdout:
        worker = threading.Thread(
            target=attach_interactive,
            args=(conn, VM),
            # the module's shell holds the console: take it over, as 'vm console --force' does
            kwargs={"stdin": stdin, "stdout": stdout, "force": True},
        )
        worker.start()
        # the escape key goes once the guest's answer is back (not after a guessed pause)
        seen = _read_until(out_read, b"attach-42", timeout=60)
        os.write(keys_write, b"\x1d")  # ^]
        worker.join(timeout=10)
        assert not worker.is_alive(), "the escape key did not end the session"
    os.close(keys_write)
    with open(out_read, "rb") as output:
        transcript = seen + output.read()
    assert b"Connected to t-infra-demo" in transcript
    assert b"attach-42" in transcript
    _reattach(conn, guest)


def _read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    """What arrives on ``fd`` until ``wanted`` is in it (or ``timeout`` passes)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
    return seen


def _reattach(conn: Connection, guest: BootedGuest) -> None:
    guest.shell.close()
    guest.shell = GuestShell.open(conn, VM)
    guest.shell.wait_ready(timeout=30)


def test_hot_added_vcpu_comes_online_in_the_guest(guest: BootedGuest) -> None:
    assert guest.shell.run("grep -c ^processor /proc/cpuinfo") == "1"
    guest.dom.setVcpusFlags(2, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    # The guest's init onlines new vCPUs once a second (there is no udev to do it).
    assert eventually(lambda: guest.shell.run("grep -c ^processor /proc/cpuinfo") == "2", 20)


def test_balloon_shrinks_the_memory_the_guest_sees(guest: BootedGuest) -> None:
    before = _mem_total_kib(guest.shell)
    guest.dom.setMemoryFlags(192 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert eventually(lambda: _mem_total_kib(guest.shell) <= before - 48 * 1024, 30)


def _mem_total_kib(shell: GuestShell) -> int:
    return int(shell.run("grep MemTotal /proc/meminfo").split()[1])


def test_acpi_shutdown_powers_the_guest_off(guest: BootedGuest) -> None:
    """Last: libvirt's graceful shutdown reaches busybox acpid and the guest powers off."""
    guest.dom.shutdown()
    deadline = time.monotonic() + 60
    while guest.dom.isActive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not guest.dom.isActive()


def _mac_of(dom: libvirt.virDomain) -> str:
    from kvmgr.xml.domain import Domain

    return str(Domain.from_xml(dom.XMLDesc(0)).devices.interfaces[0].mac)


# ----------------------------------------------------------------------------- the ISO itself
def test_build_is_cached_and_reproducible(tmp_path: Path) -> None:
    target = tmp_path / "demo.iso"
    first = build_demo_iso(target)
    digest = target.read_bytes()
    again = build_demo_iso(target)
    forced = build_demo_iso(target, force=True)
    assert (first.reused, again.reused, forced.reused) == (False, True, False)
    assert target.read_bytes() == digest
    assert target.read_bytes()[0x8028 : 0x8028 + len(VOLUME_ID)] == VOLUME_ID.encode()
    assert "virtio_net" in first.inputs.modules
    assert first.inputs.modules.index("virtio_ring") < first.inputs.modules.index("virtio")
    remove_demo_iso(target)
    assert list(tmp_path.iterdir()) == [tmp_path / "demo.iso.lock"]


def test_changed_inputs_trigger_a_rebuild(tmp_path: Path) -> None:
    target = tmp_path / "demo.iso"
    build_demo_iso(target)
    stamp = target.with_name("demo.iso.stamp")
    stamp.write_text(stamp.read_text().replace('"builder_version": "', '"builder_version": "old-'))
    assert build_demo_iso(target).reused is False
