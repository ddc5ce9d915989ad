"""Functional KVM probe: does guest code really run in /dev/kvm, at hardware speed?

A /dev/kvm node proves nothing: in a nested or sandboxed environment the device can exist, accept
every ioctl, and then run guest code thousands of times slower than hardware (the guest seems to
hang).  So the probe does what a hypervisor does: it creates a VM and a vCPU through the KVM
ioctls, loads a few bytes of 16-bit real-mode code, and runs them.  The code counts down a loop of
16 million iterations (about 10 ms on hardware virtualisation), writes a result byte to the serial
port and halts.  It runs in a child process that is killed at a timeout, because a vCPU stuck in
``KVM_RUN`` cannot be interrupted from inside.

No QEMU, no libvirt: the answer must not depend on anything but the kernel's KVM.

``cached_probe`` keeps the answer in a small JSON file so VM creation need not pay for the probe
each time.  The cache is keyed on everything the answer depends on -- the boot id, the identity of
/dev/kvm (existence, device number, inode, ctime) and the loaded kvm modules with their ``nested``
parameter -- so a ``modprobe kvm_intel`` (or a reload with ``nested=1``) invalidates it at once.
A negative answer also expires after ``NEGATIVE_TTL`` seconds, in case something else changed.
``host check`` probes afresh and stores its answer, so it and VM creation agree.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import mmap
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_DEVICE = "/dev/kvm"
DEFAULT_TIMEOUT = 3.0
NEGATIVE_TTL = 180.0  # seconds a negative result is trusted before the probe runs again
_CACHE_VERSION = 2
_KVM_MODULES = ("kvm", "kvm_intel", "kvm_amd")
_KVM_PARAMETERS = ("nested",)

# ioctl numbers from <linux/kvm.h> (KVMIO = 0xAE), spelled out because Python has no _IO macros.
_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01
_KVM_GET_VCPU_MMAP_SIZE = 0xAE04
_KVM_CREATE_VCPU = 0xAE41
_KVM_SET_USER_MEMORY_REGION = 0x4020AE46
_KVM_RUN = 0xAE80
_KVM_SET_REGS = 0x4090AE82
_KVM_GET_SREGS = 0x8138AE83
_KVM_SET_SREGS = 0x4138AE84
_KVM_API_VERSION = 12
_KVM_EXIT_IO = 2
_KVM_EXIT_HLT = 5

_GUEST_ADDR = 0x1000
_SERIAL_PORT = 0x3F8
_EXPECTED = b"K"
# mov ecx, 0x01000000 ; l: dec ecx ; jnz l ; mov dx, 0x3f8 ; mov al, 'K' ; out dx, al ; hlt
_GUEST_CODE = bytes(
    [0x66, 0xB9, 0x00, 0x00, 0x00, 0x01, 0x66, 0x49, 0x75, 0xFC,
     0xBA, 0xF8, 0x03, 0xB0, ord("K"), 0xEE, 0xF4]
)  # fmt: skip


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of the probe: ``usable`` is True only when guest code ran to completion in time."""

    usable: bool
    reason: str
    seconds: float
    device: str


class _ProbeFailed(Exception):
    pass


def _run_guest(device: str) -> str:
    """Run the guest code in this process; return '' on success or why it failed."""
    try:
        kvm = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{device} does not exist (KVM module not loaded, or no hardware virtualisation)"
    except PermissionError:
        return f"{device} is not accessible to this user (add it to the 'kvm' group)"
    try:
        return _run_guest_on(kvm)
    except OSError as err:
        return f"KVM ioctl failed: {err.strerror or err}"
    except _ProbeFailed as err:
        return str(err)


def _run_guest_on(kvm: int) -> str:
    if fcntl.ioctl(kvm, _KVM_GET_API_VERSION) != _KVM_API_VERSION:
        raise _ProbeFailed("unexpected KVM API version")
    vm = fcntl.ioctl(kvm, _KVM_CREATE_VM, 0)
    memory = mmap.mmap(-1, 0x1000, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    memory.write(_GUEST_CODE)
    host_addr = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    region = struct.pack("IIQQQ", 0, 0, _GUEST_ADDR, 0x1000, host_addr)
    fcntl.ioctl(vm, _KVM_SET_USER_MEMORY_REGION, region)
    vcpu = fcntl.ioctl(vm, _KVM_CREATE_VCPU, 0)
    run_size = fcntl.ioctl(kvm, _KVM_GET_VCPU_MMAP_SIZE, 0)
    run = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    _enter_real_mode_at(vcpu, _GUEST_ADDR)
    output = b""
    for _ in range(16):
        fcntl.ioctl(vcpu, _KVM_RUN, 0)
        exit_reason = struct.unpack_from("I", run, 8)[0]
        if exit_reason == _KVM_EXIT_IO:
            _direction, size, port, _count, offset = struct.unpack_from("BBHIQ", run, 32)
            if port == _SERIAL_PORT:
                output += run[offset : offset + size]
        elif exit_reason == _KVM_EXIT_HLT:
            if output == _EXPECTED:
                return ""
            raise _ProbeFailed(f"guest code computed {output!r}, expected {_EXPECTED!r}")
        else:
            raise _ProbeFailed(f"guest stopped with unexpected KVM exit reason {exit_reason}")
    raise _ProbeFailed("guest code never halted")


def _enter_real_mode_at(vcpu: int, address: int) -> None:
    sregs = bytearray(312)  # struct kvm_sregs; cs is its first kvm_segment
    fcntl.ioctl(vcpu, _KVM_GET_SREGS, sregs, True)
    struct.pack_into("Q", sregs, 0, 0)  # cs.base
    struct.pack_into("H", sregs, 12, 0)  # cs.selector
    fcntl.ioctl(vcpu, _KVM_SET_SREGS, bytes(sregs))
    regs = bytearray(144)  # struct kvm_regs: 16 GPRs, rip, rflags
    struct.pack_into("QQ", regs, 16 * 8, address, 0x2)  # rflags bit 1 is reserved, always set
    fcntl.ioctl(vcpu, _KVM_SET_REGS, bytes(regs))


def probe_kvm(device: str = DEFAULT_DEVICE, timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """Run the probe in a child process, killed after ``timeout`` seconds."""
    start = time.monotonic()
    if not os.path.exists(device):
        return ProbeResult(False, f"{device} does not exist", 0.0, device)
    try:
        child = subprocess.run(
            [sys.executable, "-m", "kvmgr.connect.kvm_probe", device],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        elapsed = time.monotonic() - start
        return ProbeResult(
            False,
            f"guest code in {device} did not finish within {timeout:g} s (hardware takes ~10 ms):"
            " KVM is present but does not run guests (nested virtualisation unavailable?)",
            elapsed,
            device,
        )
    elapsed = time.monotonic() - start
    reason = child.stdout.strip() or child.stderr.strip()[-300:]
    if child.returncode == 0 and not reason:
        return ProbeResult(True, f"guest code ran in {device} in {elapsed:.2f} s", elapsed, device)
    return ProbeResult(False, reason or f"probe exited with {child.returncode}", elapsed, device)


def cache_path() -> Path:
    """Where ``cached_probe`` keeps its answer: /run for root (cleared at boot), else ~/.cache."""
    base = Path("/run/kvmgr") if os.geteuid() == 0 else Path.home() / ".cache" / "kvmgr"
    return base / "kvm-probe.json"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "unknown"


def probe_inputs(
    device: str = DEFAULT_DEVICE, *, proc: Path = Path("/proc"), sys_dir: Path = Path("/sys")
) -> dict[str, Any]:
    """What the probe's answer depends on; a cached answer is valid only while this is unchanged."""
    try:
        st = os.stat(device)
        node: dict[str, Any] = {
            "exists": True,
            "rdev": st.st_rdev,
            "ino": st.st_ino,
            "ctime_ns": st.st_ctime_ns,
        }
    except OSError as err:
        node = {"exists": False, "error": type(err).__name__}
    modules: dict[str, dict[str, str]] = {}
    try:
        lines = (proc / "modules").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if fields and fields[0] in _KVM_MODULES:
            # name, size, load address (0 unless root); not the use count, which VMs change
            ident = {"size": fields[1] if len(fields) > 1 else ""}
            ident["address"] = fields[5] if len(fields) > 5 else ""
            for parameter in _KVM_PARAMETERS:
                ident[parameter] = _read(sys_dir / "module" / fields[0] / "parameters" / parameter)
            modules[fields[0]] = ident
    return {
        "boot_id": _read(proc / "sys" / "kernel" / "random" / "boot_id"),
        "device": device,
        "node": node,
        "modules": modules,
    }


def _load(path: Path, inputs: dict[str, Any], now: float) -> ProbeResult | None:
    try:
        data = json.loads(path.read_text())
        if data.get("version") != _CACHE_VERSION or data.get("inputs") != inputs:
            return None
        result = ProbeResult(**data["result"])
        probed_at = float(data["probed_at"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # no cache, an unreadable one or one from an older kvmgr: probe again
    if result.usable:
        return result
    if 0 <= now - probed_at < NEGATIVE_TTL:
        return result
    return None  # a negative answer expires: the cause may have been fixed meanwhile


def store_probe(
    result: ProbeResult, inputs: dict[str, Any], *, path: Path | None = None, now: float
) -> None:
    """Write ``result`` to the cache, atomically; a read-only home is no reason to fail."""
    target = path or cache_path()
    payload = {
        "version": _CACHE_VERSION,
        "inputs": inputs,
        "probed_at": now,
        "result": asdict(result),
    }
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def cached_probe(
    *,
    refresh: bool = False,
    device: str = DEFAULT_DEVICE,
    timeout: float = DEFAULT_TIMEOUT,
    path: Path | None = None,
    proc: Path = Path("/proc"),
    sys_dir: Path = Path("/sys"),
    probe: Callable[[str, float], ProbeResult] | None = None,
    clock: Callable[[], float] = time.time,
) -> ProbeResult:
    """The probe's answer, reused while its inputs are unchanged (negative ones only briefly).

    ``refresh`` probes afresh and stores the answer (what ``host check`` does).  The inputs are read
    before probing, so a change during the probe makes the next call probe again.
    """
    target = path or cache_path()
    inputs = probe_inputs(device, proc=proc, sys_dir=sys_dir)
    if not refresh:
        cached = _load(target, inputs, clock())
        if cached is not None:
            return cached
    result = (probe or probe_kvm)(device, timeout)
    store_probe(result, inputs, path=target, now=clock())
    return result


if __name__ == "__main__":
    failure = _run_guest(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DEVICE)
    print(failure)
    sys.exit(1 if failure else 0)
