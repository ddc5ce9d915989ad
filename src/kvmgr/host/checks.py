"""``kvmgr host check``: can this host run VMs, and what should be fixed?

What lives here: the checks themselves, each a small function taking a :class:`CheckContext` and
returning a :class:`CheckResult`; the registry (:data:`CHECKS`), listing them in display order and
saying which ones the host cannot run VMs without (``required``); and :func:`run_checks` with its
verdict (:class:`CheckReport`: can VMs run, with KVM or by software emulation).  What a check is
and how checks run concurrently under a deadline live in :mod:`kvmgr.host.check_runner`.

The checks cover what ``virt-host-validate qemu`` checks, plus a functional KVM probe (guest code
really running in /dev/kvm), the libvirt daemon, virtlogd, networks, pools and resources.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import libvirt

from kvmgr.connect.connection import libvirt_version
from kvmgr.errors import KvmgrError, libvirt_errors
from kvmgr.host.check_runner import (
    Check,
    CheckContext,
    CheckFunc,
    CheckResult,
    Status,
    run_concurrently,
)
from kvmgr.host.run import run
from kvmgr.units import GIB, MIB, format_size

CHECKS: list[Check] = []


def register(name: str, *, required: bool = False) -> Callable[[CheckFunc], CheckFunc]:
    """Add a check to the registry under ``name`` (the row title)."""

    def decorate(func: CheckFunc) -> CheckFunc:
        CHECKS.append(Check(name, func, required))
        return func

    return decorate


def _pass(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.PASS, detail)


# ----------------------------------------------------------------------------------- hardware
HW_VIRT = "hardware virtualisation"


@register(HW_VIRT)
def check_hw_virt(ctx: CheckContext) -> CheckResult:
    flags = ctx.cpu_flags()
    found = sorted(flags & {"vmx", "svm"})
    if found:
        return _pass(HW_VIRT, f"CPU flag {', '.join(found)} present")
    return CheckResult(
        HW_VIRT,
        Status.WARN,
        "the CPU reports neither vmx (Intel VT-x) nor svm (AMD-V)",
        "enable virtualisation in the firmware, or nested virtualisation on the outer "
        "hypervisor; without it VMs run emulated (slow)",
    )


KVM_DEVICE = "/dev/kvm present"


@register(KVM_DEVICE)
def check_kvm_device(ctx: CheckContext) -> CheckResult:
    if os.path.exists(ctx.kvm_device):
        return _pass(KVM_DEVICE, f"{ctx.kvm_device} exists")
    return CheckResult(
        KVM_DEVICE,
        Status.WARN,
        f"{ctx.kvm_device} does not exist",
        "load the module: modprobe kvm_intel (or kvm_amd); VMs will run emulated until then",
    )


KVM_ACCESS = "/dev/kvm accessible"


@register(KVM_ACCESS)
def check_kvm_access(ctx: CheckContext) -> CheckResult:
    if not os.path.exists(ctx.kvm_device):
        return CheckResult(KVM_ACCESS, Status.WARN, f"{ctx.kvm_device} does not exist")
    if os.access(ctx.kvm_device, os.R_OK | os.W_OK):
        return _pass(KVM_ACCESS, f"{ctx.kvm_device} is readable and writable by this user")
    return CheckResult(
        KVM_ACCESS,
        Status.WARN,
        f"{ctx.kvm_device} is not readable and writable by this user",
        "add the user to the 'kvm' group (usermod -aG kvm USER) and log in again",
    )


KVM_PROBE = "KVM runs guest code"


@register(KVM_PROBE)
def check_kvm_probe(ctx: CheckContext) -> CheckResult:
    result = ctx.probe()
    if result.usable:
        return _pass(KVM_PROBE, result.reason)
    return CheckResult(
        KVM_PROBE,
        Status.FAIL,
        result.reason,
        "VMs will use software emulation (domain type 'qemu'), 10-50x slower; enable hardware "
        "or nested virtualisation to get KVM",
    )


KVM_MODULE = "kvm_intel/kvm_amd module"


@register(KVM_MODULE)
def check_kvm_module(ctx: CheckContext) -> CheckResult:
    modules = ctx.sys / "module"
    loaded = [name for name in ("kvm_intel", "kvm_amd") if (modules / name).exists()]
    if loaded:
        return _pass(KVM_MODULE, f"{loaded[0]} is loaded")
    others = sorted(p.name for p in modules.glob("kvm*")) if modules.exists() else []
    detail = "neither kvm_intel nor kvm_amd is loaded"
    if others:
        detail += f" (loaded: {', '.join(others)})"
    return CheckResult(
        KVM_MODULE, Status.WARN, detail, "modprobe kvm_intel (Intel) or modprobe kvm_amd (AMD)"
    )


NESTED = "nested virtualisation"


@register(NESTED)
def check_nested(ctx: CheckContext) -> CheckResult:
    for module in ("kvm_intel", "kvm_amd"):
        param = ctx.sys / "module" / module / "parameters" / "nested"
        if param.exists():
            value = param.read_text().strip()
            if value in ("Y", "1"):
                return _pass(NESTED, f"{module} nested={value}: guests may run their own VMs")
            return CheckResult(
                NESTED,
                Status.WARN,
                f"{module} nested={value}: guests cannot run KVM themselves",
                f"echo 'options {module} nested=1' > /etc/modprobe.d/kvm-nested.conf and reload "
                f"{module}",
            )
    return CheckResult(
        NESTED,
        Status.WARN,
        "no kvm_intel/kvm_amd module, so no nested virtualisation setting",
        "load kvm_intel or kvm_amd first",
    )


VHOST_NET = "/dev/vhost-net"


@register(VHOST_NET)
def check_vhost_net(ctx: CheckContext) -> CheckResult:
    path = ctx.dev / "vhost-net"
    if path.exists():
        return _pass(VHOST_NET, f"{path} exists: in-kernel virtio-net acceleration")
    return CheckResult(
        VHOST_NET,
        Status.WARN,
        f"{path} does not exist: guest networking works, but slower",
        "modprobe vhost_net",
    )


TUN = "/dev/net/tun"


@register(TUN, required=True)
def check_tun(ctx: CheckContext) -> CheckResult:
    path = ctx.dev / "net" / "tun"
    if path.exists():
        return _pass(TUN, f"{path} exists: guests can get tap network devices")
    return CheckResult(
        TUN,
        Status.FAIL,
        f"{path} does not exist: guests cannot have network devices",
        "modprobe tun",
    )


# Controllers libvirt's QEMU driver uses, as virt-host-validate lists them.
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "blkio")
CGROUPS = "cgroup controllers"


def _cgroup_controllers(ctx: CheckContext) -> tuple[str, set[str]]:
    """(version, controllers available) from /proc/mounts and cgroup v2's controller list."""
    mounts = (ctx.proc / "mounts").read_text().splitlines()
    v1: set[str] = set()
    v2_root: str | None = None
    for line in mounts:
        parts = line.split()
        if len(parts) < 4:
            continue
        mountpoint, fstype, options = parts[1], parts[2], parts[3].split(",")
        if fstype == "cgroup":
            v1.update(options)
        elif fstype == "cgroup2" and v2_root is None:
            v2_root = mountpoint
    if v1 & set(CGROUP_CONTROLLERS):
        return "v1", v1
    if v2_root is not None:
        names = Path(v2_root, "cgroup.controllers").read_text().split()
        # cgroup v2 has no cpuacct/devices/blkio controllers: cpu, BPF and io stand in for them.
        available = set(names)
        available |= {"cpuacct"} if "cpu" in names else set()
        available |= {"blkio"} if "io" in names else set()
        available.add("devices")
        return "v2", available
    return "none", set()


@register(CGROUPS)
def check_cgroups(ctx: CheckContext) -> CheckResult:
    version, available = _cgroup_controllers(ctx)
    missing = [name for name in CGROUP_CONTROLLERS if name not in available]
    if version == "none":
        return CheckResult(
            CGROUPS,
            Status.WARN,
            "no cgroup filesystem is mounted: libvirt cannot limit guest CPU, memory or I/O",
            "mount cgroup2 on /sys/fs/cgroup",
        )
    if missing:
        return CheckResult(
            CGROUPS,
            Status.WARN,
            f"cgroup {version}: controllers {', '.join(missing)} unavailable",
            "enable them in the kernel/boot options; resource limits on those will not work",
        )
    return _pass(CGROUPS, f"cgroup {version}: {', '.join(CGROUP_CONTROLLERS)} available")


IOMMU = "IOMMU (device assignment)"


@register(IOMMU)
def check_iommu(ctx: CheckContext) -> CheckResult:
    groups = ctx.sys / "kernel" / "iommu_groups"
    count = len(list(groups.iterdir())) if groups.exists() else 0
    if count:
        return _pass(IOMMU, f"IOMMU enabled: {count} IOMMU groups")
    cmdline = (ctx.proc / "cmdline").read_text()
    hint = (
        "only needed for PCI passthrough: enable VT-d/AMD-Vi in the firmware and boot with "
        "intel_iommu=on (Intel) or amd_iommu=on (AMD)"
    )
    if re.search(r"\b(intel|amd)_iommu=on\b", cmdline):
        return CheckResult(
            IOMMU,
            Status.WARN,
            "IOMMU requested on the kernel command line "
            "but no IOMMU groups exist (disabled in the firmware?)",
            hint,
        )
    return CheckResult(
        IOMMU, Status.WARN, "no IOMMU groups: PCI device assignment unavailable", hint
    )


SECURE_GUEST = "secure guest support"


@register(SECURE_GUEST)
def check_secure_guest(ctx: CheckContext) -> CheckResult:
    flags = ctx.cpu_flags()
    params = {
        "AMD SEV": ctx.sys / "module" / "kvm_amd" / "parameters" / "sev",
        "Intel TDX": ctx.sys / "module" / "kvm_intel" / "parameters" / "tdx",
    }
    for label, param in params.items():
        if param.exists() and param.read_text().strip() in ("Y", "1"):
            return _pass(SECURE_GUEST, f"{label} enabled in KVM")
    cpu_has = sorted(flags & {"sev", "sev_es", "sev_snp", "tdx_guest"})
    detail = "no secure guest technology enabled in KVM (AMD SEV, Intel TDX)"
    if cpu_has:
        detail += f"; the CPU reports {', '.join(cpu_has)}"
    return CheckResult(
        SECURE_GUEST,
        Status.WARN,
        detail,
        "only needed for confidential VMs: enable SEV/TDX in the firmware and the kvm module",
    )


# ----------------------------------------------------------------------------------- software
QEMU = "QEMU binary"
_QEMU_CANDIDATES = ("qemu-system-{arch}", "/usr/libexec/qemu-kvm", "qemu-kvm")


def find_qemu() -> str | None:
    """Path of the QEMU system emulator for this machine's architecture, if installed."""
    arch = platform.machine()
    for candidate in _QEMU_CANDIDATES:
        found = shutil.which(candidate.format(arch=arch))
        if found:
            return found
    return None


@register(QEMU, required=True)
def check_qemu(ctx: CheckContext) -> CheckResult:
    binary = find_qemu()
    if binary is None:
        return CheckResult(
            QEMU,
            Status.FAIL,
            f"no QEMU system emulator for {platform.machine()} found",
            "run 'kvmgr host setup' to install QEMU",
        )
    first_line = run([binary, "--version"], timeout=10).stdout.splitlines()[0]
    match = re.search(r"version (\S+)", first_line)
    version = match.group(1) if match else first_line
    return _pass(QEMU, f"{binary}, version {version}")


LIBVIRT = "libvirt daemon"


@register(LIBVIRT, required=True)
def check_libvirt(ctx: CheckContext) -> CheckResult:
    try:
        conn = ctx.connection()
    except KvmgrError as err:
        return CheckResult(
            LIBVIRT,
            Status.FAIL,
            err.message,
            err.hint or "start it with 'kvmgr host daemons start'",
        )
    with libvirt_errors("reading the hypervisor version"):
        hv = conn.virconn.getVersion()
    hv_text = f"{hv // 1_000_000}.{hv // 1000 % 1000}.{hv % 1000}"
    return _pass(
        LIBVIRT, f"{conn.uri} reachable, libvirt {libvirt_version(conn)}, hypervisor {hv_text}"
    )


VIRTLOGD = "virtlogd"


@register(VIRTLOGD, required=True)
def check_virtlogd(ctx: CheckContext) -> CheckResult:
    path = ctx.virtlogd_socket
    hint = "start it with 'kvmgr host daemons start' (QEMU guests cannot start without it)"
    if not path.exists():
        return CheckResult(VIRTLOGD, Status.FAIL, f"{path} does not exist", hint)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except OSError as err:
            return CheckResult(
                VIRTLOGD, Status.FAIL, f"{path} refuses connections: {err.strerror or err}", hint
            )
    return _pass(VIRTLOGD, f"virtlogd answers on {path}")


SWTPM_CA = "swtpm local CA"


@register(SWTPM_CA)
def check_swtpm_ca(ctx: CheckContext) -> CheckResult:
    """Only new TPMs need it (Windows 11 VMs), so a problem is a warning, not a failure."""
    from kvmgr.host.swtpm_ca import foreign_ca_files, localca_statedir

    foreign = foreign_ca_files(ctx.qemu_conf, ctx.swtpm_localca_conf)
    if foreign is not None:
        return CheckResult(
            SWTPM_CA,
            Status.WARN,
            foreign.summary,
            f"'kvmgr host setup' gives them back ({shlex.join(foreign.fix_argv)})",
        )
    statedir = localca_statedir(ctx.swtpm_localca_conf)
    if not statedir.is_dir():
        return _pass(SWTPM_CA, f"no {statedir}: swtpm-tools not installed (only TPMs need it)")
    return _pass(SWTPM_CA, f"{statedir} belongs to the user libvirt runs swtpm as")


DEFAULT_NET = "default network"


@register(DEFAULT_NET)
def check_default_network(ctx: CheckContext) -> CheckResult:
    conn = ctx.connection()
    try:
        net = conn.virconn.networkLookupByName("default")
    except libvirt.libvirtError:
        return CheckResult(
            DEFAULT_NET,
            Status.WARN,
            "libvirt has no network named 'default'",
            "create a NAT network: kvmgr net create default --nat",
        )
    with libvirt_errors("reading the default network"):
        active, autostart = net.isActive(), net.autostart()
        bridge = net.bridgeName() if active else "-"
    if not active:
        return CheckResult(
            DEFAULT_NET,
            Status.WARN,
            "network 'default' is defined but inactive",
            "kvmgr net start default",
        )
    detail = f"active on {bridge}, autostart {'on' if autostart else 'off'}"
    return _pass(DEFAULT_NET, detail)


POOLS = "storage pool free space"


@register(POOLS)
def check_pools(ctx: CheckContext) -> CheckResult:
    conn = ctx.connection()
    with libvirt_errors("listing storage pools"):
        pools = conn.virconn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
        free = {pool.name(): pool.info()[3] for pool in pools}
    if not free:
        return CheckResult(
            POOLS,
            Status.WARN,
            "no active storage pool",
            "kvmgr creates the 'default' pool when it first needs one",
        )
    shown = ", ".join(f"{name} {format_size(size)} free" for name, size in sorted(free.items()))
    low = sorted(name for name, size in free.items() if size < ctx.min_pool_free)
    if low:
        return CheckResult(
            POOLS,
            Status.WARN,
            shown,
            f"pools {', '.join(low)} have under {format_size(ctx.min_pool_free)} free: "
            "free space or use another pool",
        )
    return _pass(POOLS, shown)


MEMORY = "memory"
MIN_MEMORY = 512 * MIB
LOW_MEMORY = 2 * GIB


def _meminfo(ctx: CheckContext) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in (ctx.proc / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        number = rest.split()
        if number:
            values[key] = int(number[0]) * 1024  # /proc/meminfo is in KiB
    return values


@register(MEMORY, required=True)
def check_memory(ctx: CheckContext) -> CheckResult:
    info = _meminfo(ctx)
    total, available = info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
    detail = f"{format_size(available)} available of {format_size(total)}"
    if available < MIN_MEMORY:
        return CheckResult(MEMORY, Status.FAIL, detail, "free memory: not even a small guest fits")
    if available < LOW_MEMORY:
        return CheckResult(MEMORY, Status.WARN, detail, "only small guests will fit")
    return _pass(MEMORY, detail)


CPUS = "CPUs"


@register(CPUS)
def check_cpus(ctx: CheckContext) -> CheckResult:
    count = len(os.sched_getaffinity(0))
    if count < 2:
        return CheckResult(
            CPUS, Status.WARN, f"{count} CPU usable", "guests and the host will compete for one CPU"
        )
    return _pass(CPUS, f"{count} CPUs usable")


# ----------------------------------------------------------------------------------- running
@dataclass(frozen=True)
class CheckReport:
    """All rows, whether VMs can run, and a one-line summary saying how."""

    results: list[CheckResult]
    can_run_vms: bool
    summary: str
    seconds: float


def run_checks(
    ctx: CheckContext, *, checks: list[Check] | None = None, deadline: float = 20.0
) -> CheckReport:
    """Run every check concurrently; each must answer within ``deadline`` seconds of the start."""
    checks = CHECKS if checks is None else checks
    start = time.monotonic()
    results = run_concurrently(ctx, checks, deadline)
    return _report(checks, results, time.monotonic() - start)


def _report(checks: list[Check], results: list[CheckResult], seconds: float) -> CheckReport:
    required_failed = [
        result.name
        for check, result in zip(checks, results, strict=True)
        if check.required and result.status is Status.FAIL
    ]
    if required_failed:
        summary = f"this host cannot run VMs: fix {', '.join(required_failed)}"
        return CheckReport(results, False, summary, seconds)
    probe = next((r for r in results if r.name == KVM_PROBE), None)
    if probe is not None and probe.status is not Status.PASS:
        summary = "this host can run VMs with software emulation (KVM unusable): expect slow guests"
    else:
        summary = "this host can run VMs with KVM acceleration"
    return CheckReport(results, True, summary, seconds)
