"""Driving the demo guest in integration tests: its domain definition, and a shell on its console.

``demo_domain`` describes a small VM booting the demo ISO (until ``kvmgr.services.create`` is
used by a test, this keeps tests independent of it).  ``GuestShell`` waits for the guest's
markers and runs shell commands on its serial console through :class:`ConsoleSession`.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

from kvmgr.connect import Connection
from kvmgr.errors import InvalidState
from kvmgr.services.console import ConsoleSession, ConsoleTimeout
from kvmgr.units import MIB
from kvmgr.xml.domain import (
    Console,
    Disk,
    Domain,
    Interface,
    Serial,
)

PROMPT = b"kvmgr-demo# "
_READY = re.compile(rb"KVMGR-IP (\S+)\s+KVMGR-READY")
_PROMPT_OR_READY = re.compile(rb"KVMGR-IP (\S+)\s+KVMGR-READY|kvmgr-demo# ")


class GuestCommandFailed(AssertionError):
    """A command run in the guest exited with a non-zero status."""


def demo_domain(
    conn: Connection,
    name: str,
    iso_path: str,
    *,
    disk_path: str | None = None,
    memory: int = 256 * MIB,
    max_memory: int | None = None,
    vcpus: int = 1,
    max_vcpus: int | None = None,
    network: str = "default",
) -> Domain:
    """A VM that boots the demo ISO: virtio disk and NIC, serial console, balloon."""
    dom = Domain()
    dom.type = conn.domain_type().domain_type
    dom.name = name
    dom.memory_bytes = max_memory or memory
    dom.current_memory_bytes = memory
    dom.vcpus = max_vcpus or vcpus
    dom.vcpus_current = vcpus
    dom.os.type = "hvm"
    dom.os.arch = "x86_64"
    dom.os.machine = "q35"
    dom.features.acpi = True  # graceful shutdown and vCPU hotplug go through ACPI
    dom.features.apic = True
    dom.on_poweroff = "destroy"
    dom.on_reboot = "restart"
    dom.on_crash = "destroy"

    cdrom = Disk()
    cdrom.type = "file"
    cdrom.device = "cdrom"
    cdrom.driver_name = "qemu"
    cdrom.driver_type = "raw"
    cdrom.source_file = iso_path
    cdrom.target_dev = "sda"
    cdrom.target_bus = "sata"
    cdrom.readonly = True
    cdrom.boot_order = 1
    dom.devices.disks.append(cdrom)

    if disk_path:
        disk = Disk()
        disk.type = "file"
        disk.device = "disk"
        disk.driver_name = "qemu"
        disk.driver_type = "qcow2"
        disk.source_file = disk_path
        disk.target_dev = "vda"
        disk.target_bus = "virtio"
        dom.devices.disks.append(disk)

    nic = Interface()
    nic.type = "network"
    nic.source_network = network
    nic.model = "virtio"
    dom.devices.interfaces.append(nic)

    serial = Serial()
    serial.type = "pty"
    serial.target_port = 0
    dom.devices.serials.append(serial)
    console = Console()
    console.type = "pty"
    console.target_type = "serial"
    console.target_port = 0
    dom.devices.consoles.append(console)

    dom.devices.memballoon.model = "virtio"
    return dom


class GuestShell:
    """The demo guest's serial shell, driven through libvirt's console stream."""

    def __init__(self, session: ConsoleSession) -> None:
        self.session = session
        self.ip: str | None = None

    @classmethod
    def open(cls, conn: Connection, name: str) -> GuestShell:
        return cls(ConsoleSession(conn, name))

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> GuestShell:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 180.0) -> str:
        """Wait for KVMGR-READY and return the guest's IPv4 address.

        The markers may have gone by before the console attached; then the shell prompt is
        there instead (a newline brings it back), and ``kvmgr-ready`` prints them again.  The
        first newline goes after 1 s of no marker, not 5 s: most consoles here attach to a guest
        that booted long ago (each of them waited 5 s for nothing), and a newline typed while the
        guest still boots is harmless (one went every 5 s of a boot before, too).
        """
        deadline = time.monotonic() + timeout
        patience = 1.0
        while True:
            remaining = deadline - time.monotonic()
            try:
                match = self.session.expect(_PROMPT_OR_READY, min(patience, max(remaining, 0.1)))
            except ConsoleTimeout:
                if time.monotonic() >= deadline:
                    raise
                self.session.write(b"\r")  # wake the prompt of a guest that booted before us
                patience = 5.0
                continue
            if match[1] is None:
                match = self._ask_ready(deadline - time.monotonic())
            self.ip = match[1].decode()
            if self.ip == "none":
                raise AssertionError(f"guest got no DHCP lease:\n{self._tail()}")
            self.session.drain()
            return self.ip

    def _ask_ready(self, timeout: float) -> re.Match[bytes]:
        self.session.drain()
        self.session.write(b"kvmgr-ready\r")
        return self.session.expect(_READY, max(timeout, 5.0))

    def run_status(self, command: str, timeout: float = 30.0) -> tuple[int, str]:
        """Run ``command`` in the guest's shell; return its exit status and output.

        The command is wrapped in begin/end markers whose typed form differs from their printed
        form (the quotes split them), so the terminal's echo of the command never matches.
        """
        if "\n" in command:
            raise ValueError("run one line at a time")
        token = secrets.token_hex(4)
        begin, end = f"KVMGR-BEGIN-{token}", f"KVMGR-END-{token}"
        line = f'echo "KVMGR-BEGIN-""{token}"; {command}; echo "KVMGR-END-""{token} $?"\r'
        self.session.drain(0.1)
        self.session.write(line.encode())
        self.session.expect(re.escape(begin).encode() + rb"\r?\n", timeout)
        match = self.session.expect(
            rb"(?s)(.*?)" + re.escape(end).encode() + rb" (\d+)\r?\n", timeout
        )
        output = match[1].decode(errors="replace").replace("\r\n", "\n").replace("\r", "")
        return int(match[2]), output.rstrip("\n")

    def run(self, command: str, timeout: float = 30.0) -> str:
        """Output of ``command``; raises :class:`GuestCommandFailed` on a non-zero status."""
        status, output = self.run_status(command, timeout)
        if status != 0:
            raise GuestCommandFailed(f"{command!r} exited with {status} in the guest:\n{output}")
        return output

    def _tail(self) -> str:
        return self.session.transcript[-1000:].decode(errors="replace")


def wait_for_state(dom_lookup: object, want_active: bool, timeout: float) -> None:
    """Poll a ``virDomain`` until it is (in)active; raise InvalidState on timeout."""
    deadline = time.monotonic() + timeout
    while bool(dom_lookup.isActive()) != want_active:  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise InvalidState(f"domain did not become {'active' if want_active else 'inactive'}")
        time.sleep(0.2)


# ------------------------------------------------------------------ what the guest sees
def eventually(check: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Whether ``check`` comes true within ``timeout`` (asked each second: a guest takes a
    moment to see a hot-plugged CPU, memory or disk)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
    return True


def guest_cpus(shell: GuestShell) -> int:
    return int(shell.run("grep -c ^processor /proc/cpuinfo").strip())


def guest_mem_total_kib(shell: GuestShell) -> int:
    line = shell.run("grep MemTotal /proc/meminfo")
    match = re.search(r"(\d+)\s*kB", line)
    assert match, line
    return int(match[1])
