"""Moving VMs between registered hosts: one VM (``vm migrate``) or all of a host (``evacuate``).

The control plane's part of a move: resolve ``--to auto`` by placement, refuse a destination in
maintenance, hold the VM's lease on both hosts, journal the move as two operations (one per host,
see :mod:`kvmgr.services.migration`), and move ownership records with the VM.  Where the
destination's QEMU listens is the host of its registry URI, the address kvmgr itself reached it
at (the daemon's own host name need not resolve on the source).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import libvirt
from sqlalchemy import select

from kvmgr.connect import is_local
from kvmgr.control.hosts import HostRegistry
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
from kvmgr.errors import InvalidState, libvirt_errors
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
    check = preflight(src, dst, name, offline=options.offline)
    report = MoveReport(name, source, target, check, verdicts)
    if dry_run:
        return report
    kind = "migrate" if check.live else "migrate offline"
    keys = [vm_key(source, check.uuid, name)]
    with (
        plane.operation(f"{kind} out", name, source, keys=keys) as source_steps,
        plane.operation(
            f"{kind} in", name, target, keys=[vm_key(target, check.uuid, name)]
        ) as dest_steps,
    ):
        report.result = migration.migrate(
            src, dst, name, options,
            dest_steps=dest_steps, source_steps=source_steps, progress=progress, cancel=cancel,
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


def evacuate(
    plane: ControlPlane,
    registry: HostRegistry,
    host: str,
    *,
    dry_run: bool = False,
    say: Callable[[str], None] | None = None,
    progress: Callable[[migration.Progress], None] | None = None,
) -> tuple[EvacuationPlan, list[MoveReport]]:
    """Move every VM off ``host`` (live if running, offline if not), then leave it in
    maintenance.  Maintenance is switched on first, so no placement picks the host meanwhile;
    a failed move stops the evacuation with the host still in maintenance."""
    plan = plan_evacuation(plane, registry, host)
    if dry_run:
        return plan, []
    registry.set(host, maintenance=True)
    done = []
    for vm, to, live in plan.moves:
        if say:
            say(f"moving {vm} to {to} ({'live' if live else 'offline'})")
        options = migration.MigrateOptions(offline=not live)
        done.append(migrate_vm(plane, registry, vm, host, to, options, progress=progress))
    return plan, done


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


@task_kind("vm.migrate", cancellable=True)  # an aborted job leaves the VM on the source
def _migrate_task(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    _admin_only(ctx)

    def progress(sample: migration.Progress) -> None:
        total = sample.disk_total + sample.memory_total
        done = sample.disk_done + sample.memory_done
        percent = min(99, done * 100 // total) if total else None
        ctx.report(f"{sample.phase}: {sample.memory_remaining >> 20} MiB of memory left", percent)

    report = migrate_vm(
        ctx.plane, HostRegistry(ctx.store), str(params["vm"]), str(params["source"]),
        str(params["to"]), _options(params), progress=progress, cancel=ctx.cancel,
    )  # fmt: skip
    return report.as_dict()


@task_kind("host.evacuate")
def _evacuate_task(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    _admin_only(ctx)
    plan, done = evacuate(
        ctx.plane, HostRegistry(ctx.store), str(params["host"]),
        say=lambda line: ctx.report(line, None),
    )  # fmt: skip
    return {**plan.as_dict(), "moved": [move.name for move in done]}
