"""The main job on the real daemon with a real guest: ``kvmgr vm create`` from the demo ISO,
ready marker and DHCP lease, then the whole lifecycle, and a delete that leaves nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.errors import InvalidState
from kvmgr.services import vms
from kvmgr.services.create import DiskRequest, NicRequest, VMSpec, create_vm
from kvmgr.services.networks import NetworkSpec, create_network
from kvmgr.units import MIB

from .conftest import Cleanup
from .guest import GuestShell

PREFIX = "t-lead-"
KVMGR = [sys.executable, "-m", "kvmgr.cli.main"]


def kvmgr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KVMGR, "-c", "qemu:///system", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def demo_vm(
    conn: Connection, demo_iso: Path, module_cleanup: Cleanup
) -> Iterator[dict[str, object]]:
    """The demo flow exactly as ``make demo`` runs it: the CLI, a disk, the NAT network."""
    module_cleanup.prefix(PREFIX)
    name = module_cleanup.vm(f"{PREFIX}demo")
    done = kvmgr(
        "vm", "create", name, "--iso", str(demo_iso), "--memory", "256M", "--vcpus", "1",
        "--disk", "64M", "--network", "default", "--graphics", "none", "--wait", "ready",
        "--wait-timeout", "240", "-o", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "domain type: qemu" in done.stderr or "domain type: kvm" in done.stderr
    yield result


def test_created_vm_is_running_with_a_lease(conn: Connection, demo_vm: dict[str, object]) -> None:
    assert demo_vm["state"] == "running"
    # the demo guest's console is watched from its first line: its marker is what was seen
    assert demo_vm["ready"] == "ready: console marker KVMGR-READY on the serial console"
    ip = str(demo_vm["ip"])
    assert ip.startswith("192.168.122.")
    # dnsmasq's lease helper records the lease a moment after the guest has configured it.
    deadline = time.monotonic() + 30
    while True:
        leases = conn.virconn.networkLookupByName("default").DHCPLeases()
        if ip in {lease["ipaddr"] for lease in leases} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ip in {lease["ipaddr"] for lease in leases}
    listed = json.loads(kvmgr("vm", "list", "-o", "json").stdout)
    row = next(row for row in listed if row["name"] == demo_vm["name"])
    assert ip in row["ips"]


def test_guest_sees_its_disk_and_can_write_it(conn: Connection, demo_vm: dict[str, object]) -> None:
    with GuestShell.open(conn, str(demo_vm["name"])) as shell:
        shell.wait_ready(60)
        assert shell.run("cat /sys/block/vda/size").strip() == str(64 * MIB // 512)
        shell.run("echo kvmgr-was-here | dd of=/dev/vda bs=512 count=1 conv=sync && sync")
        assert "kvmgr-was-here" in shell.run("dd if=/dev/vda bs=512 count=1 2>/dev/null")


def test_lifecycle(conn: Connection, demo_vm: dict[str, object]) -> None:
    name = str(demo_vm["name"])
    vms.pause(conn, name)
    assert vms.state(conn, name) == "paused"
    vms.resume(conn, name)
    assert vms.state(conn, name) == "running"
    with GuestShell.open(conn, name) as shell:
        shell.wait_ready(60)
        assert shell.run("echo alive").strip() == "alive"
    # ACPI shutdown: the demo guest's acpid powers off cleanly.
    assert vms.shutdown(conn, name, timeout=120) == "shut off"
    with pytest.raises(InvalidState):
        vms.reboot(conn, name)
    vms.start(conn, name)
    with GuestShell.open(conn, name) as shell:
        shell.wait_ready(180)
        uptime_before = float(shell.run("cut -d' ' -f1 /proc/uptime"))
        vms.reboot(conn, name)
        shell.session.expect(b"KVMGR-BOOTED", timeout=180)
        shell.wait_ready(180)
        assert float(shell.run("cut -d' ' -f1 /proc/uptime")) < uptime_before + 60
    vms.force_off(conn, name)
    assert vms.state(conn, name) == "shut off"
    vms.set_autostart(conn, name, True)
    assert conn.virconn.lookupByName(name).autostart() == 1
    vms.set_autostart(conn, name, False)


def test_delete_leaves_no_volume(conn: Connection, demo_vm: dict[str, object]) -> None:
    name = str(demo_vm["name"])
    volumes = [str(path) for path in demo_vm["volumes"]]  # type: ignore[attr-defined]
    assert volumes and all(Path(path).exists() for path in volumes)
    iso = next(d["source"] for d in vms.vm_info(conn, name)["disks"] if d["device"] == "cdrom")
    done = kvmgr("vm", "delete", name, "--force")
    assert done.returncode == 0, done.stderr
    assert not vms.exists(conn, name)
    assert not any(Path(path).exists() for path in volumes)
    assert Path(iso).exists()  # the ISO is shared, never deleted with a VM


def test_isolated_network_guest(conn: Connection, demo_iso: Path, cleanup: Cleanup) -> None:
    """A guest on an isolated network kvmgr made gets a lease there and has no way out."""
    cleanup.prefix(f"{PREFIX}iso")
    net = cleanup.network(f"{PREFIX}iso-net")
    create_network(conn, NetworkSpec(name=net, mode="isolated", subnet="10.240.250.0/24"))
    name = cleanup.vm(f"{PREFIX}iso-vm")
    result = create_vm(
        conn,
        VMSpec(
            name=name, iso=str(demo_iso), memory=256 * MIB, vcpus=1,
            disks=[DiskRequest(size=64 * MIB)], nics=[NicRequest(source=net)],
            graphics="none", wait="ready", wait_timeout=240,
        ),
    )  # fmt: skip
    assert result.ip is not None and result.ip.startswith("10.240.250.")
    with GuestShell.open(conn, name) as shell:
        shell.wait_ready(60)
        assert "default" not in shell.run("ip route")


def test_cli_errors_are_one_clear_line(demo_iso: Path) -> None:
    bad = kvmgr("vm", "create", "bad/name", "--iso", str(demo_iso))
    assert bad.returncode == 1
    assert "error: VM name 'bad/name' is not allowed" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = kvmgr("vm", "create", f"{PREFIX}x", "--iso", "/nonexistent.iso")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    down = subprocess.run(
        [*KVMGR, "-c", "qemu+unix:///system?socket=/nonexistent/sock", "vm", "list"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert down.returncode == 1
    assert "cannot connect" in down.stderr and "Traceback" not in down.stderr


def test_unknown_network_leaves_nothing(conn: Connection, demo_iso: Path) -> None:
    before = {dom.name() for dom in conn.virconn.listAllDomains(0)}
    pool = conn.virconn.storagePoolLookupByName("default")
    volumes_before = set(pool.listVolumes())
    done = kvmgr(
        "vm", "create", f"{PREFIX}nonet", "--iso", str(demo_iso), "--network", "no-such-net"
    )
    assert done.returncode == 1 and "network 'no-such-net' does not exist" in done.stderr
    pool.refresh(0)
    assert {dom.name() for dom in conn.virconn.listAllDomains(0)} == before
    assert set(pool.listVolumes()) == volumes_before
    with pytest.raises(libvirt.libvirtError):
        conn.virconn.lookupByName(f"{PREFIX}nonet")
