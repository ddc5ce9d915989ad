"""``--wait`` that means something for every guest (issue 16 item 1), on the real daemon.

The demo guest prints kvmgr's marker on its serial console, and after it answers on port 22 with
an SSH banner and answers the guest agent's guest-ping (kvmgr.images.guest).  VMs here take away
what a real installed guest may not have: a serial console (so the marker cannot be seen), the
agent's channel, a NIC; each ``vm start --wait`` must then name the signal it did see.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmgr.connect import Connection
from kvmgr.services import readiness, vms
from kvmgr.services.readiness import daemon_socket, read_banner
from kvmgr.xml.domain import Channel, Domain

from .conftest import Cleanup
from .guest import demo_domain

PREFIX = "t-waits-"
KVMGR = [sys.executable, "-m", "kvmgr.cli.main", "-c", "qemu:///system"]
#: Boot under TCG on a loaded two-core host took 43-50 s (measured); a wait is given room.
BOOT = "300"


def kvmgr(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KVMGR, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _define(
    conn: Connection,
    cleanup: Cleanup,
    name: str,
    iso: Path,
    *,
    serial: bool = True,
    agent: bool = False,
    nic: bool = True,
) -> str:
    domain: Domain = demo_domain(conn, cleanup.vm(PREFIX + name), str(iso))
    if not serial:
        for serial in list(domain.devices.serials):
            domain.devices.serials.remove(serial)
        for console in list(domain.devices.consoles):
            domain.devices.consoles.remove(console)
    if agent:
        channel = Channel()
        channel.type, channel.target_type = "unix", "virtio"
        channel.target_name = readiness.AGENT_CHANNEL
        domain.devices.channels.append(channel)
    if not nic:
        for iface in list(domain.devices.interfaces):
            domain.devices.interfaces.remove(iface)
    conn.virconn.defineXML(domain.to_xml())
    return domain.name


@pytest.fixture(scope="module")
def quiet_vm(conn: Connection, demo_iso: Path, module_cleanup: Cleanup) -> Iterator[str]:
    """A guest as a VGA-only install looks to kvmgr: no serial console, no agent, one NIC."""
    module_cleanup.prefix(PREFIX)
    yield _define(conn, module_cleanup, "quiet", demo_iso, serial=False)


def _off(conn: Connection, name: str) -> None:
    if vms.state(conn, name) != "shut off":
        vms.force_off(conn, name)


def test_timeout_keeps_the_vm_and_says_what_was_seen(conn: Connection, quiet_vm: str) -> None:
    done = kvmgr("vm", "start", quiet_vm, "--wait", "ready", "--timeout", "3")
    try:
        assert done.returncode != 0
        said = " ".join(done.stderr.split())  # the error may be wrapped to the terminal width
        assert f"VM '{quiet_vm}' was started and is kept running" in said
        assert "not seen: console marker (the VM has no serial console)" in said
        assert "guest agent (the VM has no org.qemu.guest_agent.0 channel)" in said
        assert "ssh banner (" in said
        assert f"kvmgr vm console {quiet_vm}" in said and f"kvmgr vm vnc {quiet_vm}" in said
        assert "Traceback" not in done.stderr
        assert vms.state(conn, quiet_vm) == "running"
    finally:
        _off(conn, quiet_vm)


def test_start_wait_ip_shows_the_address_and_its_source(conn: Connection, quiet_vm: str) -> None:
    done = kvmgr("vm", "start", quiet_vm, "--wait", "ip", "--timeout", BOOT)
    try:
        assert done.returncode == 0, done.stderr
        # the first source that knows it: dnsmasq's lease, or the daemon's neighbour table
        # (the guest announces its address a moment before dnsmasq records the lease)
        shown = rf"^{quiet_vm}: ip 192\.168\.122\.\d+ from (lease|neighbour|arp|dhcp-snoop)$"
        assert re.search(shown, done.stdout, re.M), done.stdout
    finally:
        _off(conn, quiet_vm)


def test_ready_without_the_marker_is_the_ssh_banner(conn: Connection, quiet_vm: str) -> None:
    done = kvmgr("vm", "start", quiet_vm, "--wait", "ready", "--timeout", BOOT)
    try:
        assert done.returncode == 0, done.stderr
        pattern = rf"^{quiet_vm}: ready: ssh banner SSH-2\.0-kvmgr-demo at 192\.168\.122\.\d+:22$"
        assert re.search(pattern, done.stdout, re.M), done.stdout
    finally:
        _off(conn, quiet_vm)


def test_ready_by_the_guest_agent(conn: Connection, demo_iso: Path, cleanup: Cleanup) -> None:
    # No NIC (so no SSH), no serial console (no marker): only the agent can say it is ready.
    name = _define(conn, cleanup, "agent", demo_iso, serial=False, agent=True, nic=False)
    done = kvmgr("vm", "start", name, "--wait", "ready", "--timeout", BOOT)
    assert done.returncode == 0, done.stderr
    assert f"{name}: ready: guest agent answered guest-ping" in done.stdout


def test_start_console_attaches_from_the_first_line(
    conn: Connection, demo_iso: Path, cleanup: Cleanup
) -> None:
    name = _define(conn, cleanup, "console", demo_iso)
    process = subprocess.Popen(
        [*KVMGR, "vm", "start", name, "--console"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    seen = b""
    deadline = time.monotonic() + float(BOOT)
    try:
        while b"KVMGR-READY" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                seen += chunk
        process.stdin.write(b"\x1d")  # the escape key leaves the console
        process.stdin.flush()
        assert process.wait(timeout=30) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
    assert seen.startswith(f"Connected to {name}".encode())
    # started paused and resumed once attached: the boot is there from before the marker
    assert b"KVMGR-BOOTED" in seen and b"KVMGR-READY" in seen
    assert vms.state(conn, name) == "running"


def test_console_and_wait_together_are_refused(quiet_vm: str) -> None:
    done = kvmgr("vm", "start", quiet_vm, "--console", "--wait", "ip")
    assert done.returncode != 0 and "--console and --wait" in done.stderr


# ------------------------------------------------------------------ the daemon's namespace
@pytest.fixture
def banner_netns() -> Iterator[int]:
    """The pid of a server in a network namespace of this test, with an SSH-like banner on
    127.0.0.1:2222 there (``ip netns exec`` runs it as that pid)."""
    name = PREFIX + "ns"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    server = subprocess.Popen(
        ["ip", "netns", "exec", name, "busybox", "nc", "-ll", "-p", "2222", "-e",
         "/bin/echo", "SSH-2.0-in-namespace"],
    )  # fmt: skip
    try:
        time.sleep(0.3)
        yield server.pid
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_banner_is_read_inside_the_daemons_namespace_only(
    conn: Connection, banner_netns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmgr.services import daemon_ns

    here = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(ConnectionRefusedError):  # nothing listens there in our own namespace
        read_banner(here, "127.0.0.1", 2222)
    # the "daemon" is the server of the test's namespace
    monkeypatch.setattr(daemon_ns, "daemon_pid", lambda _conn: banner_netns)
    before = os.stat("/proc/thread-self/ns/net").st_ino
    there = daemon_socket(conn, "127.0.0.1")
    assert read_banner(there, "127.0.0.1", 2222) == "SSH-2.0-in-namespace"
    assert os.stat("/proc/thread-self/ns/net").st_ino == before  # this thread never moved
    monkeypatch.setattr(daemon_ns, "daemon_pid", lambda _conn: 2**22 + 1)  # above pid_max
    with pytest.raises(OSError):
        daemon_socket(conn, "127.0.0.1")
