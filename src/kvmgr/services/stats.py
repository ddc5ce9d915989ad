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
from dataclasses import fields as dataclass_fields
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, NotFound, libvirt_errors
from kvmgr.host.memory import node_memory
from kvmgr.names import validate_existing_name
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
        convert = counters_from_record
        # the key is evaluated before the value, so each name is asked of libvirt once
        counters = {(name := dom.name()): convert(name, stats) for dom, stats in records}
    return StatsSample(taken_at=taken_at, vms=counters)


def _domains(conn: Connection, names: list[str]) -> list[libvirt.virDomain]:
    """The named domains from one listing call (not one lookup per name)."""
    for name in names:
        validate_existing_name(name, what="VM name")
    by_name = {dom.name(): dom for dom in conn.virconn.listAllDomains(0)}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise NotFound(
            f"no VM named {', '.join(repr(name) for name in missing)}",
            hint="'kvmgr vm list' shows the VMs",
        )
    return [by_name[name] for name in dict.fromkeys(names)]


def counters_from_record(name: str, stats: Mapping[str, Any]) -> VMCounters:
    """Turn one record of libvirt's bulk stats (KiB, per-device keys) into :class:`VMCounters`.

    Called once per VM per sample (5,000 times at 5,000 VMs), so it is written for speed: a
    group's keys are only looked at when the group is in the record (a shut-off VM has only
    ``state.*``), per-device keys come from a precomputed table instead of f-strings, and the
    frozen dataclass is filled in one step (its ``__init__`` pays ``object.__setattr__`` per
    field, which was most of the cost; measured with bench ``stats``).
    """
    get = stats.get
    empty = _EMPTY_BY_STATE.get(get("state.state", libvirt.VIR_DOMAIN_NOSTATE), _EMPTY_UNKNOWN)
    fields = empty.copy()
    fields["name"] = name
    if "vcpu.current" in stats:
        fields["vcpus"] = stats["vcpu.current"]
    if "cpu.time" in stats:
        fields["cpu_time_ns"] = stats["cpu.time"]
    if "balloon.current" in stats or "balloon.available" in stats:
        for key, field_name in _BALLOON_FIELDS:
            fields[field_name] = _kib(get(key))
    if "block.count" in stats:
        reads, writes = _device_sums(stats, stats["block.count"], _BLOCK_KEYS)
        fields["disk_read_bytes"], fields["disk_write_bytes"] = reads, writes
    if "net.count" in stats:
        rx, tx = _device_sums(stats, stats["net.count"], _NET_KEYS)
        fields["net_rx_bytes"], fields["net_tx_bytes"] = rx, tx
    counters = _new_counters(VMCounters)
    _set_attribute(counters, "__dict__", fields)
    return counters


_new_counters = object.__new__
_set_attribute = object.__setattr__
_EMPTY_COUNTERS: dict[str, Any] = {item.name: item.default for item in dataclass_fields(VMCounters)}
# the empty counters of a VM in each state, so a record costs one dict copy
_EMPTY_BY_STATE = {code: {**_EMPTY_COUNTERS, "state": label} for code, label in STATE_NAMES.items()}
_EMPTY_UNKNOWN = {**_EMPTY_COUNTERS, "state": "unknown"}
_BALLOON_FIELDS = (
    ("balloon.current", "memory_current"),
    ("balloon.available", "memory_available"),
    ("balloon.usable", "memory_usable"),
    ("balloon.unused", "memory_unused"),
)


class _DeviceKeys:
    """``(group.N.a, group.N.b)`` key pairs for device N, built once and grown on demand."""

    def __init__(self, group: str, first: str, second: str) -> None:
        self._pattern = (f"{group}.{{}}.{first}", f"{group}.{{}}.{second}")
        self.pairs: list[tuple[str, str]] = []
        self.grow(16)

    def grow(self, count: int) -> list[tuple[str, str]]:
        first, second = self._pattern
        for index in range(len(self.pairs), count):
            self.pairs.append((first.format(index), second.format(index)))
        return self.pairs


_BLOCK_KEYS = _DeviceKeys("block", "rd.bytes", "wr.bytes")
_NET_KEYS = _DeviceKeys("net", "rx.bytes", "tx.bytes")


def _kib(value: int | None) -> int | None:
    return None if value is None else int(value) * 1024


def _device_sums(
    stats: Mapping[str, Any], count: int, keys: _DeviceKeys
) -> tuple[int | None, int | None]:
    """Two counters summed over ``block.N`` or ``net.N`` devices; None where no device has it
    (a group with no devices sums to 0)."""
    count = int(count)
    pairs = keys.pairs if count <= len(keys.pairs) else keys.grow(count)
    first_sum = second_sum = 0
    first_seen = second_seen = count == 0
    get = stats.get
    for first_key, second_key in pairs[:count]:
        first = get(first_key)
        if first is not None:
            first_sum += int(first)
            first_seen = True
        second = get(second_key)
        if second is not None:
            second_sum += int(second)
            second_seen = True
    return (first_sum if first_seen else None), (second_sum if second_seen else None)


# ------------------------------------------------------------------------------------ rates
def compute_rates(prev: VMCounters | None, curr: VMCounters, dt: float) -> VMRates:
    """Rates of one VM between two samples ``dt`` seconds apart (pure: no libvirt, no clock)."""
    if dt <= 0:
        raise InvalidInput(f"samples must be taken apart in time, got dt={dt}")
    used, total = memory_use(curr)

    def rate(field_name: str, scale: float = 1.0) -> float | None:
        if prev is None or curr.state in _STOPPED:
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


# libvirt 9.0 reports a cpu.time that grows for a shut-off VM (seen: 26.75 s, growing, for a VM
# that never ran), so a stopped VM's counters make no rate.
_STOPPED = frozenset({"shut off", "crashed"})


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


# ------------------------------------------------------------------------------------ the host
@dataclass(frozen=True)
class HostCounters:
    """The host's CPU counters (nanoseconds over all CPUs) and memory (bytes) at one moment."""

    taken_at: float
    cpu_busy_ns: int | None
    cpu_total_ns: int | None
    memory_total: int
    memory_available: int


@dataclass(frozen=True)
class HostRates:
    """``cpu_percent`` is of the whole host (100 = every CPU busy), unlike a VM's, which is of
    one CPU; disk and network are the sums of the VMs' rates (what the guests move)."""

    cpu_percent: float | None
    memory_used: int
    memory_total: int
    disk_read_bps: float | None
    disk_write_bps: float | None
    net_rx_bps: float | None
    net_tx_bps: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def host_counters(conn: Connection, *, clock: Callable[[], float] = time.monotonic) -> HostCounters:
    """The host's CPU time (``getCPUStats`` over all CPUs) and memory (kvmgr.host.memory)."""
    try:
        cpu = conn.virconn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS, 0)
    except libvirt.libvirtError:
        cpu = {}  # the test driver has no CPU stats: the host's CPU is then unknown
    memory = node_memory(conn)
    total = sum(int(value) for value in cpu.values()) if cpu else None
    idle = int(cpu.get("idle", 0)) + int(cpu.get("iowait", 0))
    return HostCounters(
        taken_at=clock(),
        cpu_busy_ns=None if total is None else total - idle,
        cpu_total_ns=total,
        memory_total=memory.total,
        memory_available=memory.available,
    )


def host_rates(prev: HostCounters | None, curr: HostCounters, vms: list[VMRates]) -> HostRates:
    """The host's rates between two moments (pure); ``vms`` are the VMs' rates of the same
    interval.  Without a previous sample nothing is a rate yet."""

    def summed(field_name: str) -> float | None:
        if prev is None:
            return None
        values = [getattr(row, field_name) for row in vms]
        return float(sum(value for value in values if value is not None))

    cpu = None
    if prev is not None and None not in (prev.cpu_busy_ns, prev.cpu_total_ns, curr.cpu_busy_ns):
        busy = (curr.cpu_busy_ns or 0) - (prev.cpu_busy_ns or 0)
        total = (curr.cpu_total_ns or 0) - (prev.cpu_total_ns or 0)
        if total > 0 and busy >= 0:
            cpu = round(100.0 * busy / total, 1)
    return HostRates(
        cpu_percent=cpu,
        memory_used=max(curr.memory_total - curr.memory_available, 0),
        memory_total=curr.memory_total,
        disk_read_bps=summed("disk_read_bps"),
        disk_write_bps=summed("disk_write_bps"),
        net_rx_bps=summed("net_rx_bps"),
        net_tx_bps=summed("net_tx_bps"),
    )
