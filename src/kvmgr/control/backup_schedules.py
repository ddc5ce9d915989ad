"""Scheduled backups: ``kvmgr backup schedule VM|--all --every 1d --at 02:00``, fired by the
workers.

A schedule's windows are the instants ``at + k * every`` (UTC, counted from the Unix epoch), or,
with a time zone, the wall time ``at`` in that zone every ``every`` days (DST handled; see
:mod:`kvmgr.control.backup_windows`), so every worker computes the same windows from the row
alone.  Each housekeeping beat a worker
calls :func:`fire_due`: for a schedule whose newest window has not been fired, it moves the
schedule's ``last_window`` forward (a conditional UPDATE: one of several workers matches), inserts
the window's run (unique per schedule and window) and queues its ``backup.scheduled`` task, in
one transaction.  A worker that loses either race rolls back, so a window runs exactly once
however many workers share the database (SQLite or PostgreSQL).

Only the newest window is ever due: windows missed while no worker ran collapse into one run at
the next start, not one per missed window.  A window is not fired while the schedule's previous
run is still queued or running (a slow backup delays the next, it does not pile them up).

The task runs the backups through :class:`kvmgr.control.backups.Backups` (leases, journal,
catalog, failure rows, the stored retention policy, full when the chain is broken) with the
rights of whoever made the schedule, as they are when it runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import libvirt
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from kvmgr.control import tasks
from kvmgr.control.backup_schedule_models import EVERY_VM, BackupRun, BackupSchedule
from kvmgr.control.backup_windows import (
    check_window,
    due_window,
    format_every,
    next_window,
    parse_at,
    parse_every,
    parse_tz,
    zone_of,
)
from kvmgr.control.backups import Backups
from kvmgr.control.plane import ControlPlane
from kvmgr.errors import (
    AlreadyExists,
    Forbidden,
    KvmgrError,
    NotFound,
    libvirt_errors,
)
from kvmgr.names import validate_name
from kvmgr.store import audit
from kvmgr.store.clip import clip
from kvmgr.store.db import Store
from kvmgr.store.models import Role, Task, User, aware, utcnow
from kvmgr.store.users import Principal

log = logging.getLogger(__name__)

#: Runs kept per schedule (the newest); older ones are history nobody reads.
KEEP_RUNS = 100
ACTIVE = ("queued", "running")
KIND = "backup.scheduled"


# ------------------------------------------------------------------------------ the face
@dataclass
class Schedules:
    """Schedules and their runs on a :class:`ControlPlane`'s store."""

    plane: ControlPlane

    @property
    def store(self) -> Store:
        return self.plane.store

    def add(
        self,
        host: str,
        vm: str | None,
        *,
        every: str,
        at: str | None = None,
        tz: str | None = None,
        repo: str | None = None,
        who: Principal,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Schedule backups of ``vm`` (None: every VM of ``host``).  The first run is the first
        window after now, not one that passed before the schedule existed.  ``at`` is a wall
        time in zone ``tz`` (None: UTC)."""
        seconds, offset = parse_every(every), parse_at(at) if at is not None else None
        zone = parse_tz(tz) if tz is not None else None
        check_window(seconds, offset, zone)
        target = EVERY_VM if vm is None else vm
        if vm is not None:
            validate_name(vm, what="VM name")
        Backups(self.plane).repository(repo)  # NotFound with a hint before anything is stored
        if vm is not None:
            self._check_vm(host, vm)
        moment = now or utcnow()
        with self.store.session() as session:
            exists = session.scalar(
                select(BackupSchedule.id).where(
                    BackupSchedule.host == host, BackupSchedule.vm == target
                )
            )
            if exists is not None:
                raise AlreadyExists(
                    f"{_what(target)} on host {host} has a backup schedule already (id {exists})",
                    hint=f"remove it first: 'kvmgr backup schedule remove {vm or '--all'}'",
                )
            row = BackupSchedule(
                host=clip(BackupSchedule, "host", host),
                vm=target,
                every=seconds,
                at=offset,
                tz=zone,
                repo=repo,
                created=moment,
                created_by=clip(BackupSchedule, "created_by", who.name),
                owner_id=who.id if who.id > 0 else None,
                last_window=due_window(seconds, offset, moment, zone),
            )
            session.add(row)
            session.flush()
            return _schedule_dict(row, None, moment)

    def _check_vm(self, host: str, vm: str) -> None:
        conn = self.plane.connect(host)
        with libvirt_errors(f"looking up VM {vm}"):
            try:
                conn.virconn.lookupByName(vm)
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                raise NotFound(
                    f"VM {vm!r} does not exist on host {host}",
                    hint="'kvmgr vm list' shows the VMs (or use --all for every VM)",
                ) from None

    def remove(self, host: str, vm: str | None) -> None:
        target = EVERY_VM if vm is None else vm
        with self.store.session() as session:
            done = session.execute(
                delete(BackupSchedule).where(
                    BackupSchedule.host == host, BackupSchedule.vm == target
                )
            )
            if not getattr(done, "rowcount", 0):
                raise NotFound(
                    f"{_what(target)} on host {host} has no backup schedule",
                    hint="'kvmgr backup schedule list' shows the schedules",
                )

    def remove_id(self, schedule_id: int) -> None:
        with self.store.session() as session:
            done = session.execute(delete(BackupSchedule).where(BackupSchedule.id == schedule_id))
            if not getattr(done, "rowcount", 0):
                raise NotFound(
                    f"backup schedule {schedule_id} does not exist",
                    hint="GET /api/v1/backup-schedules lists them",
                )

    def all(self, *, now: datetime | None = None) -> list[dict[str, Any]]:
        """Every schedule with its next window and its last run's result."""
        moment = now or utcnow()
        with self.store.session() as session:
            rows = session.scalars(select(BackupSchedule).order_by(BackupSchedule.id)).all()
            last = {run.schedule_id: run for run in session.scalars(_last_runs())}
            return [_schedule_dict(row, last.get(row.id), moment) for row in rows]

    def runs(self, schedule_id: int | None = None, *, limit: int = 50) -> list[dict[str, Any]]:
        """Runs newest first."""
        query = select(BackupRun).order_by(BackupRun.window.desc(), BackupRun.id.desc())
        if schedule_id is not None:
            query = query.where(BackupRun.schedule_id == schedule_id)
        with self.store.session() as session:
            return [_run_dict(run) for run in session.scalars(query.limit(limit))]


def scheduled_points(store: Store) -> dict[str, int]:
    """Point (and failure row) id -> the schedule whose run took it."""
    found: dict[str, int] = {}
    with store.session() as session:
        for schedule_id, points in session.execute(
            select(BackupRun.schedule_id, BackupRun.points).where(BackupRun.points != "")
        ):
            for point in points.split():
                found[point] = schedule_id
    return found


# ------------------------------------------------------------------------------ firing
def fire_due(store: Store, now: datetime | None = None) -> list[int]:
    """Queue the due window of every schedule that has one; returns the runs this call queued."""
    moment = now or utcnow()
    settle(store)
    with store.session() as session:
        schedules = [
            (row.id, row.host, row.vm, row.every, row.at, row.tz, row.last_window)
            for row in session.scalars(select(BackupSchedule))
        ]
        busy = set(
            session.scalars(select(BackupRun.schedule_id).where(BackupRun.state.in_(ACTIVE)))
        )
    fired = []
    for schedule_id, host, vm, every, at, tz, last in schedules:
        window = due_window(every, at, moment, tz)
        if (last is not None and aware(last) >= window) or schedule_id in busy:
            continue
        try:
            run = _fire(store, schedule_id, host, vm, window)
        except (IntegrityError, OperationalError) as err:
            # Another worker fired it (the unique key), or held the write lock too long; either
            # way the window is not lost: the winner queued it, or the next beat tries again.
            log.debug("schedule %s window %s not fired here: %s", schedule_id, window, err)
            continue
        if run is not None:
            fired.append(run)
    return fired


def _fire(store: Store, schedule_id: int, host: str, vm: str, window: datetime) -> int | None:
    with store.session() as session:
        # The first statement writes, so SQLite takes its write lock here and a second worker
        # waits, then matches no row; PostgreSQL's row lock does the same.
        claimed = session.execute(
            update(BackupSchedule)
            .where(
                BackupSchedule.id == schedule_id,
                or_(BackupSchedule.last_window.is_(None), BackupSchedule.last_window < window),
            )
            .values(last_window=window)
        )
        if getattr(claimed, "rowcount", 0) != 1:
            return None  # another worker moved it first (or the schedule was removed)
        run = BackupRun(schedule_id=schedule_id, window=window, state="queued", queued=utcnow())
        session.add(run)
        session.flush()  # the unique (schedule, window) key is checked here
        who = Principal(id=0, name=f"schedule:{schedule_id}", role=Role.admin, group=None)
        task = tasks.add_task(
            session,
            KIND,
            {"run": run.id},
            owner=who,
            target=vm if vm != EVERY_VM else f"all VMs of {host}",
            host=host,
        )
        run.task_id = task["id"]
        old = select(BackupRun.id).where(BackupRun.schedule_id == schedule_id)
        keep = old.order_by(BackupRun.window.desc()).limit(KEEP_RUNS)
        session.execute(
            delete(BackupRun).where(
                BackupRun.schedule_id == schedule_id, BackupRun.id.not_in(keep.scalar_subquery())
            )
        )
        return run.id


def settle(store: Store) -> None:
    """End the runs whose task ended without the run's handler ending them: the worker died
    (task interrupted), or the task was cancelled before it ran."""
    with store.session() as session:
        pending = session.execute(
            select(BackupRun, Task.state, Task.error)
            .join(Task, Task.id == BackupRun.task_id, isouter=True)
            .where(BackupRun.state.in_(ACTIVE))
        ).all()
        for run, task_state, task_error in pending:
            if task_state in tasks.ACTIVE_STATES:
                continue
            run.state = "interrupted" if task_state == "interrupted" else "failed"
            run.error = task_error or f"its task is {task_state or 'gone'}"
            run.finished = utcnow()


# ------------------------------------------------------------------------------ running
@tasks.task_kind(KIND, system=True)
def _run(ctx: tasks.TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    """One window of a schedule: back up its VM (or each VM of the host), record the run."""
    run_id = int(params["run"])
    started = utcnow()
    clock = time.monotonic()
    with ctx.store.session() as session:
        run = session.get(BackupRun, run_id)
        schedule = session.get(BackupSchedule, run.schedule_id) if run is not None else None
        if run is None or schedule is None:
            raise NotFound(f"backup run {run_id} or its schedule was removed before it ran")
        run.state, run.started = "running", started
        target, repo, owner_id, made_by = (
            schedule.vm,
            schedule.repo,
            schedule.owner_id,
            schedule.created_by,
        )
        schedule_id = schedule.id
    taken: list[str] = []
    failures: list[str] = []
    try:
        who = _creator(ctx.store, owner_id, made_by)
        plane = ctx.plane.for_actor(f"schedule:{schedule_id} ({who.name})"[:64])
        names = [target] if target != EVERY_VM else _every_vm(ctx, schedule_id)
        backups = Backups(plane)
        for number, name in enumerate(names):
            ctx.report(
                f"backing up {name} ({number + 1} of {len(names)})",
                5 + 90 * number // max(1, len(names)),
            )
            try:
                point = backups.create(ctx.host, name, repo=repo, taken=taken)
                _audit(ctx.store, schedule_id, name, "ok", f"point {point['id']} ({point['kind']})")
            except KvmgrError as err:
                failures.append(f"{name}: {err}")
                _audit(ctx.store, schedule_id, name, "error", str(err))
    except KvmgrError as err:  # the creator lost the right, the VM list failed
        failures.append(str(err))
        _audit(ctx.store, schedule_id, target, "error", str(err))
    error = "; ".join(failures)[:4000] or None
    with ctx.store.session() as session:
        run = session.get(BackupRun, run_id)
        if run is not None:
            run.state = "failed" if failures else "done"
            run.finished = utcnow()
            run.duration = time.monotonic() - clock
            run.points = " ".join(taken)
            run.error = error
    if error:
        raise KvmgrError(
            f"scheduled backup failed: {error}", hint="'kvmgr backup list' shows the failure rows"
        )
    return {"run": run_id, "points": taken}


def _creator(store: Store, owner_id: int | None, made_by: str) -> Principal:
    """Whoever made the schedule, with the rights they have now: backups are admins'."""
    if owner_id is None:  # made with the CLI, i.e. by root on the host
        return Principal(id=0, name=made_by, role=Role.admin, group=None)
    with store.session() as session:
        user = session.get(User, owner_id)
        if user is None:
            raise Forbidden(
                f"user {made_by!r} who made this schedule no longer exists",
                hint="remove the schedule and make it again as a current admin",
            )
        if not user.role_enum.at_least(Role.admin):
            raise Forbidden(
                f"user {user.name!r} who made this schedule is no longer an admin",
                hint="remove the schedule and make it again as a current admin",
            )
        return Principal(id=user.id, name=user.name, role=user.role_enum, group=user.group)


def _every_vm(ctx: tasks.TaskContext, schedule_id: int) -> list[str]:
    """The host's persistent VMs, less those with a schedule of their own (they follow it)."""
    conn = ctx.conn()
    with libvirt_errors("listing VMs"):
        names = sorted(
            dom.name()
            for dom in conn.virconn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
        )
    with ctx.store.session() as session:
        own = set(
            session.scalars(
                select(BackupSchedule.vm).where(
                    BackupSchedule.host == ctx.host, BackupSchedule.id != schedule_id
                )
            )
        )
    return [name for name in names if name not in own]


def _audit(store: Store, schedule_id: int, vm: str, result: str, detail: str) -> None:
    with store.session() as session:
        audit.record(
            session,
            user=f"schedule:{schedule_id}",
            action="backup.scheduled",
            target=vm,
            result=result,
            detail=detail[:2000],
        )


# ------------------------------------------------------------------------------ metrics
def metric_lines(store: Store, now: datetime | None = None) -> list[str]:
    """Per schedule: when its next window is, when its last run ended, how long it took, whether
    it failed, and how many of its kept runs failed (``/metrics``)."""
    moment = now or utcnow()
    with store.session() as session:
        rows = session.scalars(select(BackupSchedule).order_by(BackupSchedule.id)).all()
        last = {run.schedule_id: run for run in session.scalars(_last_runs(ended=True))}
        failed: dict[int, int] = dict(
            session.execute(
                select(BackupRun.schedule_id, func.count())
                .where(BackupRun.state.in_(("failed", "interrupted")))
                .group_by(BackupRun.schedule_id)
            ).all()
        )
        table = [
            (
                f'schedule="{row.id}",host="{_label(row.host)}",vm="{_label(row.vm)}"',
                next_window(row.every, row.at, moment, row.tz),
                last.get(row.id),
                failed.get(row.id, 0),
            )
            for row in rows
        ]
    out: list[str] = []

    def family(name: str, text: str, values: list[tuple[str, str]]) -> None:
        out.extend([f"# HELP {name} {text}", f"# TYPE {name} gauge"])
        out.extend(f"{name}{{{labels}}} {value}" for labels, value in values)

    family(
        "kvmgr_backup_schedule_next_window_timestamp_seconds",
        "when the schedule's next window is",
        [(labels, str(int(upcoming.timestamp()))) for labels, upcoming, _, _ in table],
    )
    ended = [(labels, run) for labels, _, run, _ in table if run is not None and run.finished]
    family(
        "kvmgr_backup_schedule_last_run_timestamp_seconds",
        "when the schedule's last run ended",
        [
            (labels, str(int(aware(run.finished).timestamp())))
            for labels, run in ended
            if run.finished
        ],
    )
    family(
        "kvmgr_backup_schedule_last_run_duration_seconds",
        "how long the schedule's last run took",
        [(labels, f"{run.duration:.3f}") for labels, run in ended],
    )
    family(
        "kvmgr_backup_schedule_last_run_failed",
        "1 if the schedule's last run failed, else 0",
        [(labels, "0" if run.state == "done" else "1") for labels, run in ended],
    )
    family(
        "kvmgr_backup_schedule_failed_runs",
        f"runs of the schedule that failed (of its newest {KEEP_RUNS})",
        [(labels, str(count)) for labels, _, _, count in table],
    )
    return out


# ------------------------------------------------------------------------------ shapes
def _last_runs(*, ended: bool = False) -> Any:
    """The newest run of each schedule (of the ended ones, with ``ended``)."""
    newest = select(BackupRun.schedule_id, func.max(BackupRun.window).label("window"))
    if ended:
        newest = newest.where(BackupRun.state.not_in(ACTIVE))
    latest = newest.group_by(BackupRun.schedule_id).subquery()
    return select(BackupRun).join(
        latest,
        (BackupRun.schedule_id == latest.c.schedule_id) & (BackupRun.window == latest.c.window),
    )


def _what(target: str) -> str:
    return "every VM" if target == EVERY_VM else f"VM {target}"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _schedule_dict(row: BackupSchedule, run: BackupRun | None, now: datetime) -> dict[str, Any]:
    return {
        "id": row.id,
        "host": row.host,
        "vm": "--all" if row.vm == EVERY_VM else row.vm,
        "every": format_every(row.every),
        "at": f"{row.at // 3600:02d}:{row.at % 3600 // 60:02d}" if row.at is not None else None,
        "tz": row.tz or "UTC",
        "repo": row.repo,
        # In the schedule's zone, so that 02:00 in Paris reads 02:00 (the offset says which).
        "next": next_window(row.every, row.at, now, row.tz)
        .astimezone(zone_of(row.tz))
        .isoformat(timespec="seconds"),
        "last_run": run.state if run is not None else None,
        "last_window": aware(run.window).isoformat(timespec="seconds") if run else None,
        "last_duration": round(run.duration, 2) if run is not None else None,
        "last_error": run.error if run is not None else None,
        "created_by": row.created_by,
    }


def _run_dict(run: BackupRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "schedule": run.schedule_id,
        "window": aware(run.window).isoformat(timespec="seconds"),
        "state": run.state,
        "task": run.task_id,
        "started": aware(run.started).isoformat(timespec="seconds") if run.started else None,
        "finished": aware(run.finished).isoformat(timespec="seconds") if run.finished else None,
        "duration": round(run.duration, 2),
        "points": run.points.split(),
        "error": run.error,
    }
