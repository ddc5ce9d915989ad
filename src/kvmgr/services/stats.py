"""Resource use of VMs: CPU, memory, disk and network, from one bulk libvirt call per sample.

libvirt reports counters (CPU nanoseconds, bytes read...), not rates.  A rate needs two samples,
so the API is: :func:`collect` takes a sample of every (or the named) VMs with a single
``getAllDomainStats``/``domainListGetStats`` call, and :func:`rates` turns two samples into rates
with the pure :func:`compute_rates`.  Nothing here sleeps per VM; :func:`sample_rates` sleeps
once between two samples for all VMs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, NotFound, libvirt_errors
from kvmgr.names import validate_name
from kvmgr.services.vms import STATE_NAMES

STATS_GROUPS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)
DEFAULT_INTERVAL = 1.0


@dataclass(frozen=True)
class VMCounters:
    """One VM's counters at one moment (bytes and nanoseconds since the VM started)."""

    name: str
    state: str
    vcpus: int | None = None
    cpu_time_ns: int | None = None
    memory_current: int | None = None  # what the balloon gives the guest
    memory_available: int | None = None  # total memory the guest sees (balloon stats)
    memory_usable: int | None = None  # what the guest could still use without swapping
    memory_unused: int | None = None  # free in the guest
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None


@dataclass(frozen=True)
class StatsSample:
    """Counters of many VMs taken by one libvirt call, with a monotonic timestamp."""

    taken_at: float
    vms: dict[str, VMCounters] = field(default_factory=dict)


@dataclass(frozen=True)
class VMRates:
    """What a person wants to see: percentages and bytes per second.

    ``cpu_percent`` is relative to one host CPU (as ``top`` shows it: 200 means two CPUs busy).
    Rates are ``None`` when they cannot be known: the VM is not running, it was not in the
    previous sample, or its counters restarted (the VM was restarted in between).
    """

    name: str
    state: str
    vcpus: int | None
    cpu_percent: float | None
    memory_used: int | None
    memory_total: int | None
    disk_read_bps: float | None
    disk_write_bps: float | None
    net_rx_bps: float | None
    net_tx_bps: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------ sampling
def collect(
    conn: Connection, names: list[str] | None = None, *, clock: Callable[[], float] = time.monotonic
) -> StatsSample:
    """Counters of every VM, or of ``names``, from one bulk libvirt stats call."""
    with libvirt_errors("reading VM statistics"):
        if names:
            records = conn.virconn.domainListGetStats(_domains(conn, names), STATS_GROUPS, 0)
        else:
            records = conn.virconn.getAllDomainStats(STATS_GROUPS, 0)
        taken_at = clock()
        counters = [counters_from_record(dom.name(), stats) for dom, stats in records]
    return StatsSample(taken_at=taken_at, vms={item.name: item for item in counters})


def _domains(conn: Connection, names: list[str]) -> list[libvirt.virDomain]:
    """The named domains from one listing call (not one lookup per name)."""
    for name in names:
        validate_name(name, what="VM name")
    by_name = {dom.name(): dom for dom in conn.virconn.listAllDomains(0)}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise NotFound(
            f"no VM named {', '.join(repr(name) for name in missing)}",
            hint="'kvmgr vm list' shows the VMs",
        )
    return [by_name[name] for name in dict.fromkeys(names)]


def counters_from_record(name: str, stats: Mapping[str, Any]) -> VMCounters:
    """Turn one record of libvirt's bulk stats (KiB, per-device keys) into :class:`VMCounters`."""
    state = stats.get("state.state", libvirt.VIR_DOMAIN_NOSTATE)
    return VMCounters(
        name=name,
        state=STATE_NAMES.get(state, "unknown"),
        vcpus=stats.get("vcpu.current"),
        cpu_time_ns=stats.get("cpu.time"),
        memory_current=_kib(stats.get("balloon.current")),
        memory_available=_kib(stats.get("balloon.available")),
        memory_usable=_kib(stats.get("balloon.usable")),
        memory_unused=_kib(stats.get("balloon.unused")),
        disk_read_bytes=_device_sum(stats, "block", "rd.bytes"),
        disk_write_bytes=_device_sum(stats, "block", "wr.bytes"),
        net_rx_bytes=_device_sum(stats, "net", "rx.bytes"),
        net_tx_bytes=_device_sum(stats, "net", "tx.bytes"),
    )


def _kib(value: int | None) -> int | None:
    return None if value is None else int(value) * 1024


def _device_sum(stats: Mapping[str, Any], group: str, counter: str) -> int | None:
    """Sum a counter over ``block.N`` or ``net.N`` devices; None when the group is absent."""
    count = stats.get(f"{group}.count")
    if count is None:
        return None
    values = [stats.get(f"{group}.{index}.{counter}") for index in range(int(count))]
    known = [int(value) for value in values if value is not None]
    return sum(known) if known or count == 0 else None


# ------------------------------------------------------------------------------------ rates
def compute_rates(prev: VMCounters | None, curr: VMCounters, dt: float) -> VMRates:
    """Rates of one VM between two samples ``dt`` seconds apart (pure: no libvirt, no clock)."""
    if dt <= 0:
        raise InvalidInput(f"samples must be taken apart in time, got dt={dt}")
    used, total = memory_use(curr)

    def rate(field_name: str, scale: float = 1.0) -> float | None:
        if prev is None:
            return None
        before: int | None = getattr(prev, field_name)
        after: int | None = getattr(curr, field_name)
        if before is None or after is None or after < before:
            return None  # unknown, or the counters restarted with the VM
        return float(after - before) / dt * scale

    cpu = rate("cpu_time_ns", 100 / 1e9)
    return VMRates(
        name=curr.name,
        state=curr.state,
        vcpus=curr.vcpus,
        cpu_percent=None if cpu is None else round(cpu, 1),
        memory_used=used,
        memory_total=total,
        disk_read_bps=rate("disk_read_bytes"),
        disk_write_bps=rate("disk_write_bytes"),
        net_rx_bps=rate("net_rx_bytes"),
        net_tx_bps=rate("net_tx_bytes"),
    )


def memory_use(curr: VMCounters) -> tuple[int | None, int | None]:
    """(used, total) guest memory: from the guest's balloon statistics when it reports them,
    else only the total the balloon gives it."""
    total = curr.memory_available or curr.memory_current
    free = curr.memory_usable if curr.memory_usable is not None else curr.memory_unused
    if curr.memory_available is None or free is None:
        return None, total
    return max(curr.memory_available - free, 0), total


def rates(prev: StatsSample, curr: StatsSample) -> list[VMRates]:
    """Rates of every VM in ``curr`` (sorted by name); VMs new since ``prev`` have no rates."""
    dt = curr.taken_at - prev.taken_at
    return [
        compute_rates(prev.vms.get(name), counters, dt)
        for name, counters in sorted(curr.vms.items())
    ]


def sample_rates(
    conn: Connection,
    names: list[str] | None = None,
    *,
    interval: float = DEFAULT_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
) -> list[VMRates]:
    """Two samples ``interval`` seconds apart (one sleep for all VMs), as rates."""
    if interval <= 0:
        raise InvalidInput("the interval must be greater than zero", hint="e.g. --interval 1")
    first = collect(conn, names)
    sleep(interval)
    return rates(first, collect(conn, names))
