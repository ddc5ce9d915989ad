"""Moving VMs between registered hosts: one VM (``vm migrate``) or all of a host (``evacuate``).

The control plane's part of a move: resolve ``--to auto`` by placement, refuse a destination in
maintenance, hold the VM's lease on both hosts, journal the move as two operations (one per host,
see :mod:`kvmgr.services.migration`), and move ownership records with the VM.  Where the
destination's QEMU listens is the host of its registry URI, the address kvmgr itself reached it
at (the daemon's own host name need not resolve on the source).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import libvirt
from sqlalchemy import select

from kvmgr.connect import is_local
from kvmgr.control.hosts import HostRegistry
from kvmgr.control.move_limits import EVACUATE_PARALLEL, EVACUATE_PARALLEL_MAX
from kvmgr.control.placement import (
    HostView,
    Move,
    Need,
    Verdict,
    choose,
    gather,
    plan_many,
    plan_rebalance,
)
from kvmgr.control.plane import ControlPlane, vm_key
from kvmgr.control.tasks import TaskContext, task_kind
from kvmgr.errors import InvalidInput, InvalidState, OperationFailed, libvirt_errors
from kvmgr.services import migration, migration_dhcp, vms
from kvmgr.services.migration_checks import Preflight, preflight
from kvmgr.services.placement import group_of
from kvmgr.store.models import Role
from kvmgr.store.ownership import ObjectOwner

AUTO = "auto"


@dataclass
class MoveReport:
    name: str
    source: str
    target: str
    check: Preflight
    verdicts: list[Verdict] = field(default_factory=list)  # when placement chose the target
    result: migration.MigrationResult | None = None  # None: dry run
    reservations: list[str] = field(default_factory=list)  # DHCP reservations that followed

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "vm": self.name,
            "from": self.source,
            "to": self.target,
            "preflight": self.check.as_dict(),
        }
        if self.verdicts:
            data["placement"] = [vars(v) for v in self.verdicts]
        if self.result is not None:
            data["result"] = vars(self.result)
            data["reservations_moved"] = self.reservations
        return data


def need_of(plane: ControlPlane, host: str, name: str, require: dict[str, str]) -> Need:
    """What VM ``name`` on ``host`` asks of a destination: memory, vCPUs, labels, its group."""
    dom = vms.lookup(plane.connect(host), name)
    with libvirt_errors(f"reading VM {name}"):
        _state, _max_memory, memory, vcpus, _time = dom.info()
        group = group_of(dom)
    return Need(
        vm=name,
        memory=int(memory) * 1024,
        vcpus=int(vcpus),
        require=require,
        group=group.name if group else None,
        anti_affinity=bool(group and group.anti_affinity),
        avoid=frozenset({host}),
    )


def _address(uri: str) -> str | None:
    return None if is_local(uri) else urlsplit(uri).hostname


def migrate_vm(
    plane: ControlPlane,
    registry: HostRegistry,
    name: str,
    source: str,
    target: str,
    options: migration.MigrateOptions | None = None,
    *,
    require: dict[str, str] | None = None,
    dry_run: bool = False,
    progress: Callable[[migration.Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> MoveReport:
    """Move VM ``name`` from host ``source`` to ``target`` (a host name, or ``auto``)."""
    options = options or migration.MigrateOptions()
    verdicts: list[Verdict] = []
    if target == AUTO:
        need = need_of(plane, source, name, require or {})
        target, verdicts = choose(gather(registry, with_groups=need.group is not None), need)
    if target == source:
        raise InvalidState(f"VM {name} is on host {target} already")
    record = registry.get(target)
    if record.maintenance:
        raise InvalidState(
            f"host {target} is in maintenance",
            hint=f"choose another host, or: kvmgr host set {target} --maintenance off",
        )
    options = replace(options, dest_address=options.dest_address or _address(record.uri))
    src, dst = plane.connect(source), plane.connect(target)
    if dry_run:
        check = preflight(src, dst, name, offline=options.offline)
        return MoveReport(name, source, target, check, verdicts)
    dom = vms.lookup(src, name)
    with libvirt_errors(f"reading VM {name}"):
        uuid, running = dom.UUIDString(), bool(dom.isActive())
    live = running if options.offline is None else not options.offline
    kind = "migrate" if live else "migrate offline"
    with (
        plane.operation(f"{kind} out", name, source, keys=[vm_key(source, uuid, name)]) as out,
        plane.operation(f"{kind} in", name, target, keys=[vm_key(target, uuid, name)]) as into,
    ):
        # Checked once, under both leases: nothing kvmgr does can change what it saw meanwhile.
        check = preflight(src, dst, name, offline=options.offline)
        report = MoveReport(name, source, target, check, verdicts)
        report.result = migration.migrate(
            src, dst, name, options, check=check,
            dest_steps=into, source_steps=out, progress=progress, cancel=cancel,
        )  # fmt: skip
    _move_ownership(plane, check, source, target, report.result.paths)
    # After the move: a kill here leaves the reservation on the source, never on neither.
    report.reservations = migration_dhcp.carry(src, dst, check.reservations)
    return report


def _move_ownership(
    plane: ControlPlane, check: Preflight, source: str, target: str, paths: dict[str, str]
) -> None:
    """The VM's and its volumes' owner rows now name the destination host (and new paths)."""
    with plane.store.session() as session:
        rows = session.scalars(select(ObjectOwner).where(ObjectOwner.host == source)).all()
        for row in rows:
            if row.kind in ("vm", "template") and row.key == check.uuid:
                row.host = target
            elif row.kind == "volume" and row.key in paths:
                row.host, row.key = target, paths[row.key]


# ------------------------------------------------------------------------------ evacuation
@dataclass
class EvacuationPlan:
    host: str
    moves: list[tuple[str, str, bool]]  # (vm, destination, live)
    verdicts: dict[str, list[Verdict]]

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host,
            "moves": [{"vm": vm, "to": to, "live": live} for vm, to, live in self.moves],
            "placement": {vm: [vars(v) for v in vs] for vm, vs in self.verdicts.items()},
        }


def plan_evacuation(plane: ControlPlane, registry: HostRegistry, host: str) -> EvacuationPlan:
    """Where each VM of ``host`` would go; refuses as a whole when one has nowhere to go."""
    conn = plane.connect(host)
    with libvirt_errors(f"listing the VMs of host {host}"):
        domains = sorted(conn.virconn.listAllDomains(0), key=lambda d: d.name())
        running = {d.name(): bool(d.isActive()) for d in domains}
    needs = [need_of(plane, host, dom.name(), {}) for dom in domains]
    others = [r for r in registry.all() if r.name != host]
    views: list[HostView] = gather(registry, others, with_groups=any(n.group for n in needs))
    # Running VMs first: they need the memory now; shut-off ones only need disk space.
    order = sorted(needs, key=lambda n: (not running[n.vm], -n.memory))
    planned = plan_many(views, [n if running[n.vm] else replace(n, memory=0) for n in order])
    return EvacuationPlan(
        host,
        [(need.vm, to, running[need.vm]) for need, to, _verdicts in planned],
        {need.vm: verdicts for need, _to, verdicts in planned},
    )


RUNNING, MOVED, FAILED, CANCELLED = "moving", "moved", "failed", "cancelled"
NOT_STARTED = "not started"


@dataclass
class MoveOutcome:
    """What became of one planned move of an evacuation (wall-clock times, UTC)."""

    vm: str
    target: str
    live: bool
    state: str = NOT_STARTED
    started: datetime | None = None
    finished: datetime | None = None
    error: str | None = None
    report: MoveReport | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "vm": self.vm,
            "to": self.target,
            "live": self.live,
            "state": self.state,
            "started": self.started.isoformat() if self.started else None,
            "finished": self.finished.isoformat() if self.finished else None,
            "error": self.error,
            "result": vars(self.report.result) if self.report and self.report.result else None,
        }


@dataclass
class EvacuationReport:
    plan: EvacuationPlan
    parallel: int
    outcomes: list[MoveOutcome]
    maintenance: bool  # the host's maintenance flag afterwards
    empty: bool

    @property
    def moved(self) -> list[MoveOutcome]:
        return [o for o in self.outcomes if o.state == MOVED]

    @property
    def failed(self) -> list[MoveOutcome]:
        return [o for o in self.outcomes if o.state in (FAILED, CANCELLED)]

    def as_dict(self) -> dict[str, object]:
        return {
            **self.plan.as_dict(),
            "parallel": self.parallel,
            "outcomes": [o.as_dict() for o in self.outcomes],
            "moved": [o.vm for o in self.moved],
            "failed": {o.vm: o.error for o in self.failed},
            "not_started": [o.vm for o in self.outcomes if o.state == NOT_STARTED],
            "maintenance": self.maintenance,
            "empty": self.empty,
        }


def run_bounded(
    outcomes: list[MoveOutcome],
    move: Callable[[MoveOutcome], MoveReport],
    parallel: int,
    cancel: threading.Event,
    changed: Callable[[MoveOutcome], None] = lambda _outcome: None,
) -> None:
    """Run ``move`` for each outcome in order, at most ``parallel`` at once, filling in each
    outcome.  After the first failure (or a ``cancel``) no move starts; those running finish,
    since stopping a move half way is an abort the caller did not ask for.  ``changed`` hears
    of each move as it starts and as it ends (from the thread that runs it)."""
    if not 1 <= parallel <= EVACUATE_PARALLEL_MAX:
        raise InvalidInput(
            f"parallel must be 1 to {EVACUATE_PARALLEL_MAX}, not {parallel}",
            hint=f"the default, {EVACUATE_PARALLEL}, suits one source link",
        )
    stop = threading.Event()

    def one(outcome: MoveOutcome) -> None:
        outcome.started = datetime.now(UTC)
        outcome.state = RUNNING
        changed(outcome)
        try:
            outcome.report = move(outcome)
            outcome.state = MOVED
        except Exception as err:  # reported per move; the evacuation goes on with the rest
            outcome.state = CANCELLED if cancel.is_set() else FAILED
            outcome.error = str(err)
            stop.set()
        finally:
            outcome.finished = datetime.now(UTC)
            changed(outcome)

    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="evacuate") as pool:
        running: set[Future[None]] = set()
        try:
            for outcome in outcomes:
                while len(running) >= parallel:
                    _done, running = wait(running, return_when=FIRST_COMPLETED)
                if stop.is_set() or cancel.is_set():
                    break
                running.add(pool.submit(one, outcome))
            wait(running)
        except BaseException:
            # Ctrl-C lands here, in the calling thread: the moves run in others, so abort
            # them (each VM stays on its source) rather than leave them running unwatched.
            cancel.set()
            raise


def evacuate(
    plane: ControlPlane,
    registry: HostRegistry,
    host: str,
    *,
    parallel: int = EVACUATE_PARALLEL,
    dry_run: bool = False,
    say: Callable[[str], None] | None = None,
    progress: Callable[[str, migration.Progress], None] | None = None,
    cancel: threading.Event | None = None,
    changed: Callable[[MoveOutcome], None] = lambda _outcome: None,
) -> EvacuationReport:
    """Move every VM off ``host`` (live if running, offline if not), ``parallel`` at a time.

    The whole plan is made first (placement sees each earlier move's memory and group), so
    nothing moves unless every VM has somewhere to go.  The host is put in maintenance while
    it drains, so that no placement picks it meanwhile; it stays there only if it ends up
    empty, else it gets its earlier flag back (a half-evacuated host takes new VMs as before)."""
    plan = plan_evacuation(plane, registry, host)
    outcomes = [MoveOutcome(vm, to, live) for vm, to, live in plan.moves]
    before = registry.get(host).maintenance
    if dry_run:
        return EvacuationReport(plan, parallel, outcomes, before, not plan.moves)
    cancel = cancel or threading.Event()
    registry.set(host, maintenance=True)

    def move(outcome: MoveOutcome) -> MoveReport:
        if say:
            say(
                f"moving {outcome.vm} to {outcome.target} ({'live' if outcome.live else 'offline'})"
            )
        watch = None if progress is None else functools.partial(progress, outcome.vm)
        report = migrate_vm(
            plane, registry, outcome.vm, host, outcome.target,
            migration.MigrateOptions(offline=not outcome.live), progress=watch, cancel=cancel,
        )  # fmt: skip
        if say:
            say(f"moved {outcome.vm} to {outcome.target}")
        return report

    try:
        run_bounded(outcomes, move, parallel, cancel, changed)
    finally:
        with libvirt_errors(f"listing the VMs of host {host}"):
            empty = not plane.connect(host).virconn.listAllDomains(0)
        if not empty and not before:
            registry.set(host, maintenance=False)
    return EvacuationReport(plan, parallel, outcomes, empty or before, empty)


# ------------------------------------------------------------------------------ rebalance
def rebalance(
    plane: ControlPlane,
    registry: HostRegistry,
    *,
    threshold: float = 0.2,
    apply: bool = False,
    say: Callable[[str], None] | None = None,
) -> tuple[list[Move], list[MoveReport]]:
    """The live moves that even out the hosts' committed guest memory (see
    :func:`kvmgr.control.placement.plan_rebalance`); with ``apply``, made one after another."""
    records = [r for r in registry.all() if not r.maintenance]
    views = gather(registry, records, with_groups=True)
    vms: dict[str, list[Need]] = {}
    for view in views:
        if view.error is not None:
            continue
        with libvirt_errors(f"listing the running VMs of host {view.name}"):
            running = plane.connect(view.name).virconn.listAllDomains(
                libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
            )
            names = sorted(dom.name() for dom in running)
        vms[view.name] = [need_of(plane, view.name, name, {}) for name in names]
    moves = plan_rebalance(views, vms, threshold)
    done = []
    if apply:
        for move in moves:
            if say:
                say(f"moving {move.vm} from {move.source} to {move.target}")
            done.append(migrate_vm(plane, registry, move.vm, move.source, move.target))
    return moves, done


# ------------------------------------------------------------------------------ tasks (API)
def _options(params: dict[str, Any]) -> migration.MigrateOptions:
    return migration.MigrateOptions(
        offline=params.get("offline"),
        max_downtime_ms=params.get("max_downtime_ms"),
        bandwidth_mib=params.get("bandwidth_mib"),
        parallel=params.get("parallel"),
        postcopy=bool(params.get("postcopy", False)),
    )


def _admin_only(ctx: TaskContext) -> None:
    # Checked again when the task runs: the submitter's role may have been lowered since.
    if ctx.owner.role is not Role.admin:
        raise InvalidState(f"{ctx.owner.name} is no longer an admin: only admins move VMs")


def sample_dict(sample: migration.Progress) -> dict[str, object]:
    """One job-stats sample as the task's ``result.live`` shows it (bytes, bytes/s, seconds)."""
    return {**asdict(sample), "eta": sample.eta}


def _percent(sample: migration.Progress) -> int | None:
    total = sample.disk_total + sample.memory_total
    done = sample.disk_done + sample.memory_done
    return min(99, done * 100 // total) if total else None


@task_kind("vm.migrate", cancellable=True)  # an aborted job leaves the VM on the source
def _migrate_task(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    _admin_only(ctx)
    downtimes: list[int] = []  # each allowed downtime the move went through, for the page

    def progress(sample: migration.Progress) -> None:
        if sample.downtime_ms is not None and sample.downtime_ms not in downtimes:
            downtimes.append(sample.downtime_ms)
        ctx.measured(
            f"{sample.phase}: {sample.memory_remaining >> 20} MiB of memory left",
            _percent(sample),
            {**sample_dict(sample), "downtime_steps": downtimes},
        )

    report = migrate_vm(
        ctx.plane, HostRegistry(ctx.store), str(params["vm"]), str(params["source"]),
        str(params["to"]), _options(params), progress=progress, cancel=ctx.cancel,
    )  # fmt: skip
    return report.as_dict()


#: Seconds between an evacuation's progress writes: several moves report twice a second each,
#: and every write is a commit plus an event row, so all of them share one write per interval.
EVACUATE_REPORT_EVERY = 0.5


@task_kind("host.evacuate", cancellable=True)  # a cancel aborts the moves in flight only
def _evacuate_task(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    _admin_only(ctx)
    samples: dict[str, dict[str, object]] = {}
    lines: list[str] = []
    lock = threading.Lock()
    last = [0.0]

    def publish(force: bool) -> None:
        with lock:
            now = time.monotonic()
            if not force and now - last[0] < EVACUATE_REPORT_EVERY:
                return
            last[0] = now
            ctx.measured(lines[-1] if lines else "planned", None, {"moves": dict(samples)})

    def say(line: str) -> None:
        with lock:
            lines.append(line)

    def changed(outcome: MoveOutcome) -> None:
        with lock:
            samples[outcome.vm] = {**samples.get(outcome.vm, {}), **outcome.as_dict()}
        publish(True)

    def progress(vm: str, sample: migration.Progress) -> None:
        with lock:
            samples[vm] = {**samples.get(vm, {}), **sample_dict(sample)}
        publish(False)

    report = evacuate(
        ctx.plane, HostRegistry(ctx.store), str(params["host"]),
        parallel=int(params.get("parallel") or EVACUATE_PARALLEL),
        say=say, progress=progress, cancel=ctx.cancel, changed=changed,
    )  # fmt: skip
    if report.failed:
        # The task fails so that a watcher sees it; the error says what moved and what did not.
        raise OperationFailed(evacuation_summary(report))
    return report.as_dict()


def evacuation_summary(report: EvacuationReport) -> str:
    """One paragraph: what moved, what failed and why, what was not started, maintenance."""
    moved = ", ".join(o.vm for o in report.moved) or "nothing"
    parts = [f"evacuation of {report.plan.host}: moved {moved}"]
    parts += [f"{o.vm} to {o.target} {o.state}: {o.error}" for o in report.failed]
    waiting = [o.vm for o in report.outcomes if o.state == NOT_STARTED]
    if waiting:
        parts.append(f"not started: {', '.join(waiting)}")
    parts.append(
        "the host is empty and in maintenance"
        if report.empty
        else f"the host still has VMs; maintenance {'on' if report.maintenance else 'off'}"
    )
    return "; ".join(parts)
