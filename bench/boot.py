"""Issue 8.4: boot to ready from the demo ISO under emulation (full mode only).

The clock runs from the command's start to ``KVMGR-READY`` on the guest's serial console:

* ``kvmgr vm create --wait ready`` (kvmgr defines, starts paused, attaches, resumes, waits);
* ``virt-install`` with the same resources (``--noautoconsole``), then the bench attaches to the
  serial console through libvirt-python and waits for the marker (printed seconds after start,
  so attaching after virt-install returns misses nothing);
* bare ``qemu-system-x86_64`` with the machine, CPU and devices libvirt starts for kvmgr's VM
  (its command line in /var/log/libvirt/qemu/<vm>.log: q35, ``-nodefaults``, the PCIe root
  ports, qemu-xhci, virtio-serial with the guest agent port, the CD on SATA, virtio-balloon),
  with the serial port on stdio.  What is left between the two is kvmgr + libvirt, not devices.

All guests: 256 MiB, 1 vCPU, q35, no disk, no NIC, TCG.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt

from bench import cleanup
from bench.core import BenchError, Context, Line, Result, Skip, Target, interleaved, run_command
from bench.driverfile import NAME_PREFIX

PREFIX = f"{NAME_PREFIX}boot-"
MARKER = b"KVMGR-READY"
ISO_PATH = Path("/var/lib/kvmgr/bench/t-bench-demo.iso")
READY_TIMEOUT = 300.0
TARGET = Target("<=1.10x bare QEMU", max_ratio=1.10)


def demo_iso() -> Path:
    """The demo ISO, built (or reused when its inputs are unchanged) by kvmgr.images."""
    from kvmgr.images.demo_iso import build_demo_iso

    return Path(build_demo_iso(ISO_PATH).path)


def run(ctx: Context) -> Iterator[Line]:
    if ctx.quick:
        yield Skip("boot", "skipped in --quick mode (guest boots)")
        return
    try:
        iso = demo_iso()
    except ImportError as err:
        yield Skip("boot", f"not available yet: no demo ISO builder ({err})")
        return
    conn = libvirt.open(ctx.system_uri)
    serial = itertools.count()
    try:
        _clean(conn)
        ctx.say("boot to ready: kvmgr, virt-install, bare QEMU")
        measured = interleaved(
            {
                "kvmgr": lambda: _kvmgr_boot(ctx, conn, iso, f"{PREFIX}kvmgr-{next(serial)}"),
                "virt-install": lambda: _virt_install_boot(
                    ctx, conn, iso, f"{PREFIX}vi-{next(serial)}"
                ),
                "qemu": lambda: _bare_qemu_boot(iso),
            },
            ctx.reps(2, 3),
        )
    finally:
        _clean(conn)
        conn.close()
    yield Result(
        "boot",
        "demo ISO to KVMGR-READY (TCG)",
        "s",
        "kvmgr vm create --wait ready",
        measured["kvmgr"],
        "bare qemu-system-x86_64",
        measured["qemu"],
        TARGET,
    )
    yield Result(
        "boot",
        "demo ISO to KVMGR-READY (TCG)",
        "s",
        "kvmgr vm create --wait ready",
        measured["kvmgr"],
        "virt-install + console",
        measured["virt-install"],
    )


def _kvmgr_boot(ctx: Context, conn: libvirt.virConnect, iso: Path, name: str) -> float:
    argv = [
        *(ctx.kvmgr, "-c", ctx.system_uri, "vm", "create", name, "--iso", str(iso)),
        *("--os", "generic", "--memory", "256M", "--vcpus", "1", "--disk", "none"),
        *("--network", "none", "--graphics", "none", "--wait", "ready", "-o", "json"),
    ]
    began = time.perf_counter()
    try:
        run_command(argv, timeout=READY_TIMEOUT)
        return time.perf_counter() - began
    finally:
        cleanup.remove_domain(conn, name)


def _virt_install_boot(ctx: Context, conn: libvirt.virConnect, iso: Path, name: str) -> float:
    argv = [
        *("virt-install", "--connect", ctx.system_uri, "--name", name, "--virt-type", "qemu"),
        *("--machine", "q35", "--memory", "256", "--vcpus", "1", "--cdrom", str(iso)),
        *("--os-variant", "generic", "--disk", "none", "--network", "none"),
        *("--graphics", "none", "--noautoconsole"),
    ]
    began = time.perf_counter()
    try:
        run_command(argv, timeout=READY_TIMEOUT)
        wait_for_console_marker(conn, name, MARKER, READY_TIMEOUT)
        return time.perf_counter() - began
    finally:
        cleanup.remove_domain(conn, name)


def wait_for_console_marker(
    conn: libvirt.virConnect, name: str, marker: bytes, timeout: float
) -> None:
    """Read the domain's serial console through a libvirt stream until ``marker`` appears."""
    dom = conn.lookupByName(name)
    stream = conn.newStream(0)
    dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
    found = threading.Event()

    def read() -> None:
        seen = b""
        try:
            while not found.is_set():
                chunk = stream.recv(4096)
                if not chunk or not isinstance(chunk, bytes):
                    return
                seen = (seen + chunk)[-4096:]
                if marker in seen:
                    found.set()
        except libvirt.libvirtError:
            return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    with contextlib.suppress(libvirt.libvirtError):
        stream.abort()
    if not found.is_set():
        raise BenchError(f"{name} printed no {marker.decode()} within {timeout:g} s")


def bare_qemu_argv(iso: Path) -> list[str]:
    """QEMU as libvirt 9.0 starts kvmgr's VM (``--disk none --network none --graphics none``),
    minus what only libvirt needs (QMP monitor, -S, sandbox) and with the serial port on stdio."""
    from kvmgr.services.create import HOTPLUG_PORTS

    argv = [
        *("qemu-system-x86_64", "-machine", "q35,usb=off,dump-guest-core=off", "-accel", "tcg"),
        *("-cpu", "qemu64", "-m", "256", "-smp", "1,maxcpus=2,sockets=2,cores=1,threads=1"),
        *("-display", "none", "-no-user-config", "-nodefaults", "-rtc", "base=utc"),
        *("-no-shutdown", "-boot", "strict=on", "-audiodev", "none,id=audio1"),
    ]
    # kvmgr's VM here has three PCIe devices (USB, virtio-serial, balloon) and the free ports
    for index in range(1, 3 + HOTPLUG_PORTS + 1):  # libvirt packs eight functions per slot
        slot, function = divmod(index - 1, 8)
        port: dict[str, object] = {"driver": "pcie-root-port", "port": 7 + index}
        port |= {"chassis": index, "id": f"pci.{index}", "bus": "pcie.0"}
        port["addr"] = f"{slot + 1:#x}" + (f".{function:#x}" if function else "")
        if function == 0:
            port["multifunction"] = True
        argv += ["-device", json.dumps(port)]
    devices: list[dict[str, object]] = [
        {"driver": "qemu-xhci", "id": "usb", "bus": "pci.1", "addr": "0x0"},
        {"driver": "virtio-serial-pci", "id": "virtio-serial0", "bus": "pci.2", "addr": "0x0"},
        {"driver": "ide-cd", "bus": "ide.0", "drive": "cd", "id": "sata0-0-0", "bootindex": 1},
        {"driver": "isa-serial", "chardev": "serial", "id": "serial0", "index": 0},
        {"driver": "virtserialport", "bus": "virtio-serial0.0", "nr": 1, "chardev": "agent"},
        {"driver": "virtio-balloon-pci", "id": "balloon0", "bus": "pci.3", "addr": "0x0"},
    ]
    iso_node = {"driver": "file", "filename": str(iso), "node-name": "iso", "read-only": True}
    argv += ["-blockdev", json.dumps(iso_node)]
    argv += ["-blockdev", json.dumps({"driver": "raw", "file": "iso", "node-name": "cd"})]
    argv += ["-chardev", "stdio,id=serial", "-chardev", "null,id=agent"]
    devices[4]["name"] = "org.qemu.guest_agent.0"
    for device in devices:
        argv += ["-device", json.dumps(device)]
    return argv


def _bare_qemu_boot(iso: Path) -> float:
    argv = bare_qemu_argv(iso)
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        if not _read_until(proc, MARKER, READY_TIMEOUT, lambda: time.perf_counter() - began):
            raise BenchError(f"bare QEMU printed no {MARKER.decode()} within {READY_TIMEOUT:g} s")
        return time.perf_counter() - began
    finally:
        proc.kill()
        proc.wait()


def _read_until(
    proc: subprocess.Popen[bytes], marker: bytes, timeout: float, elapsed: Callable[[], float]
) -> bool:
    assert proc.stdout is not None
    seen = b""
    while elapsed() < timeout:
        chunk = proc.stdout.read1(4096)
        if not chunk:
            return False
        seen = (seen + chunk)[-4096:]
        if marker in seen:
            return True
    return False


def _clean(conn: libvirt.virConnect) -> None:
    cleanup.sweep(conn, PREFIX)
