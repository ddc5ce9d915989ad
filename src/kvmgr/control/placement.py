"""Placement: which registered host a VM goes to, and why each other host was not picked.

:func:`gather` asks every candidate host for its load in parallel (each bounded, an unreachable
host is a reason, not a failure); :func:`decide` is pure: it rules out hosts in maintenance,
unreachable, the VM's own, without a required label, without the memory, or holding a member of
the VM's anti-affinity group, then ranks the rest by the share of memory left after placing the
VM, less the vCPUs committed per CPU, plus a bonus for hosts holding its (affinity) group.
:func:`plan_many` places several VMs one after another, each decision seeing the earlier ones
(evacuation), and refuses as a whole when one VM has nowhere to go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from kvmgr.connect import Connection
from kvmgr.connect.bounded import fan_out
from kvmgr.control.hosts import HostRecord, HostRegistry, connect_uri
from kvmgr.errors import InvalidState, KvmgrError
from kvmgr.services.create import VMSpec, requirements
from kvmgr.services.placement import HostLoad, host_load
from kvmgr.units import MIB

#: Weight of committed vCPUs per host CPU against the share of memory left (both ~0..1).
CPU_WEIGHT = 0.5
AFFINITY_BONUS = 1.0
MAX_REASONS = 10  # hosts named in a refusal (--explain lists them all)


@dataclass(frozen=True)
class HostView:
    """One candidate as placement sees it."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    maintenance: bool = False
    error: str | None = None  # why it could not be asked
    cpus: int = 0
    memory_total: int = 0
    memory_available: int = 0
    vcpus_running: int = 0
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group -> its VMs here
    refusal: str | None = None  # what this host lacks for the VM (a network, the ISO, ...)


@dataclass(frozen=True)
class Need:
    """What the VM to place needs."""

    vm: str
    memory: int
    vcpus: int = 1
    require: dict[str, str] = field(default_factory=dict)
    group: str | None = None
    anti_affinity: bool = False
    avoid: frozenset[str] = frozenset()  # its current host


@dataclass(frozen=True)
class Verdict:
    host: str
    eligible: bool
    reason: str
    score: float = 0.0


def decide(hosts: Iterable[HostView], need: Need) -> list[Verdict]:
    """Every host's verdict, the best eligible host first."""
    verdicts = [_judge(host, need) for host in hosts]
    return sorted(verdicts, key=lambda v: (not v.eligible, -v.score, v.host))


def _judge(host: HostView, need: Need) -> Verdict:
    if host.name in need.avoid:
        return Verdict(host.name, False, "the VM is there now")
    if host.maintenance:
        return Verdict(host.name, False, "in maintenance")
    if host.error is not None:
        return Verdict(host.name, False, f"unreachable: {host.error}")
    for key, value in need.require.items():
        if host.labels.get(key) != value:
            has = host.labels.get(key)
            return Verdict(
                host.name, False, f"needs label {key}={value}, has {key}={has}" if has else
                f"needs label {key}={value}, has none",
            )  # fmt: skip
    others = [m for m in host.groups.get(need.group or "", ()) if m != need.vm]
    if need.group and need.anti_affinity and others:
        return Verdict(
            host.name, False, f"anti-affinity group {need.group}: {', '.join(others)} is there"
        )
    if host.refusal is not None:  # after the labels: the user's own constraints read first
        return Verdict(host.name, False, host.refusal)
    if host.memory_available < need.memory:
        return Verdict(
            host.name, False,
            f"needs {need.memory // MIB} MiB, {host.memory_available // MIB} MiB available",
        )  # fmt: skip
    left = (host.memory_available - need.memory) / host.memory_total if host.memory_total else 0
    load = (host.vcpus_running + need.vcpus) / host.cpus if host.cpus else 1.0
    score = left - CPU_WEIGHT * load
    reason = (
        f"{(host.memory_available - need.memory) // MIB} MiB free after, {load:.2f} vCPU per CPU"
    )
    if need.group and not need.anti_affinity and others:
        score += AFFINITY_BONUS
        reason += f", holds group {need.group}"
    return Verdict(host.name, True, reason, round(score, 4))


def choose(hosts: Iterable[HostView], need: Need) -> tuple[str, list[Verdict]]:
    """The chosen host's name and every verdict; :class:`InvalidState` when none fits."""
    verdicts = decide(hosts, need)
    if not verdicts or not verdicts[0].eligible:
        shown = "; ".join(f"{v.host}: {v.reason}" for v in verdicts[:MAX_REASONS])
        more = len(verdicts) - MAX_REASONS
        raise InvalidState(
            f"no host can take VM {need.vm}: {shown}" + (f"; and {more} more" if more > 0 else ""),
            hint="free a host, take one out of maintenance, or relax --require/--anti-affinity",
        )
    return verdicts[0].host, verdicts


def placed(host: HostView, need: Need) -> HostView:
    """``host`` as it will be once the VM of ``need`` runs there (for the next decision)."""
    groups = dict(host.groups)
    if need.group:
        groups[need.group] = (*groups.get(need.group, ()), need.vm)
    return replace(
        host,
        memory_available=host.memory_available - need.memory,
        vcpus_running=host.vcpus_running + need.vcpus,
        groups=groups,
    )


def plan_many(hosts: list[HostView], needs: list[Need]) -> list[tuple[Need, str, list[Verdict]]]:
    """Place each VM in turn, each decision seeing the earlier ones; all or nothing
    (:class:`InvalidState` names the first VM that has nowhere to go)."""
    plan = []
    current = {host.name: host for host in hosts}
    for need in needs:
        chosen, verdicts = choose(current.values(), need)
        plan.append((need, chosen, verdicts))
        current[chosen] = placed(current[chosen], need)
    return plan


# ------------------------------------------------------------------------------ facts
def gather(
    registry: HostRegistry, hosts: list[HostRecord] | None = None, *, with_groups: bool = False
) -> list[HostView]:
    """Every (or each given) registered host's view, asked in parallel, each within the bound."""

    def ask(record: HostRecord) -> HostView:
        load = host_load(connect_uri(record.uri, registry.timeout), with_groups=with_groups)
        return _view(record, load)

    return _ask_all(registry, registry.all() if hosts is None else hosts, ask)


def _view(record: HostRecord, load: HostLoad, refusal: str | None = None) -> HostView:
    return HostView(
        record.name, dict(record.labels), record.maintenance, None, load.cpus,
        load.memory_total, load.memory_available, load.vcpus_running, load.groups, refusal,
    )  # fmt: skip


def _ask_all(
    registry: HostRegistry, records: list[HostRecord], ask: Callable[[HostRecord], HostView]
) -> list[HostView]:
    """``ask`` of every host in parallel; a host that does not answer in time is unreachable."""
    outcomes = fan_out(records, ask, registry.timeout)
    return [
        outcome.value
        if outcome.ok and outcome.value is not None
        else HostView(record.name, dict(record.labels), record.maintenance, str(outcome.error))
        for record, outcome in zip(records, outcomes, strict=True)
    ]


def place_new(
    registry: HostRegistry,
    spec: VMSpec,
    *,
    require: dict[str, str] | None = None,
    group: str | None = None,
    anti_affinity: bool = False,
    authorise: Callable[[str, Connection], VMSpec] | None = None,
) -> tuple[str, list[Verdict]]:
    """The host a new VM goes to (``vm create --host auto``) and every host's verdict.

    Each host is asked, in parallel and within the bound, for its load and for what the VM
    would need there: a host where the create would be refused (the name is taken, a network,
    pool or the ISO is missing, or ``authorise`` refuses the request's inputs there; it returns
    the request with its inputs resolved for that host) is ruled out with that reason.  The
    VM's memory and vCPUs are the request's or, without them, the OS defaults a host worked out.
    """
    asked: dict[str, tuple[int, int]] = {}

    def ask(record: HostRecord) -> HostView:
        conn = connect_uri(record.uri, registry.timeout)
        load = host_load(conn, with_groups=group is not None)
        try:
            there = spec if authorise is None else authorise(record.name, conn)
            asked[record.name] = requirements(conn, there)
        except KvmgrError as err:
            return _view(record, load, err.message)
        return _view(record, load)

    views = _ask_all(registry, registry.all(), ask)
    memory, vcpus = next(iter(asked.values()), (spec.memory or 0, spec.vcpus or 1))
    need = Need(
        vm=spec.name, memory=memory, vcpus=vcpus, require=dict(require or {}), group=group,
        anti_affinity=anti_affinity,
    )  # fmt: skip
    return choose(views, need)


# ------------------------------------------------------------------------------ rebalance
@dataclass(frozen=True)
class Move:
    vm: str
    source: str
    target: str
    memory: int


def plan_rebalance(
    hosts: list[HostView], vms: dict[str, list[Need]], threshold: float, *, max_moves: int = 20
) -> list[Move]:
    """Moves that bring every host's committed guest memory (share of its RAM) within
    ``threshold`` of each other: each takes a VM from the fullest host to the emptiest when that
    narrows the gap and breaks no anti-affinity group; stops when no move helps.

    Committed guest memory, not the kernel's free memory: what the guests were given is what a
    move changes, and it does not swing with page cache.
    """
    usable = [h for h in hosts if not h.maintenance and h.error is None and h.memory_total]
    placed = {h.name: list(vms.get(h.name, [])) for h in usable}
    total = {h.name: h.memory_total for h in usable}
    free = {h.name: h.memory_available for h in usable}
    moves: list[Move] = []

    def share(name: str) -> float:
        return sum(n.memory for n in placed[name]) / total[name]

    while len(moves) < max_moves and len(usable) > 1:
        ranked = sorted(placed, key=share)
        low, high = ranked[0], ranked[-1]
        gap = share(high) - share(low)
        if gap <= threshold:
            break
        chosen = None
        for need in sorted(placed[high], key=lambda n: n.memory):
            after_high = share(high) - need.memory / total[high]
            after_low = share(low) + need.memory / total[low]
            members = [n.vm for n in placed[low] if need.group and n.group == need.group]
            if need.anti_affinity and members:
                continue
            if need.memory > free[low] or max(after_high, after_low) >= share(high):
                continue
            chosen = need
            break
        if chosen is None:
            break
        placed[high].remove(chosen)
        placed[low].append(chosen)
        free[low] -= chosen.memory
        free[high] += chosen.memory
        moves.append(Move(chosen.vm, high, low, chosen.memory))
    return moves
