"""The task queue: long operations as rows that any worker process can claim, exactly once.

A task is a registered *kind* (a handler in :data:`KINDS`, like the recovery actions of
kvmgr.services.steps) with JSON params, submitted by a user (id and name) for a host.  Any API
replica submits; any worker (``kvmgr worker``, or the one inside ``kvmgr serve``) claims:

- PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` picks a queued row no other claimer holds;
- SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock first, so claims of separate
  processes are serialised;

and on both the claim is a conditional ``UPDATE ... WHERE state = 'queued'`` whose row count says
whether we got it.  A worker heartbeats the tasks it runs; a task whose worker stopped (stale
heartbeat, or its process on this machine is gone) is never re-run blindly: the journal's
recovery finishes or undoes what it did, and the task is marked ``interrupted``.

Who sees what: an admin sees every task; anyone else sees only the tasks they submitted (by user
id, so a new user given a deleted user's name inherits nothing).  See docs/SECURITY.md.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from kvmgr.connect import Connection
from kvmgr.control import events, notify, task_secrets
from kvmgr.control.authz import Authz
from kvmgr.control.plane import ControlPlane
from kvmgr.errors import InvalidInput, KvmgrError, NotFound
from kvmgr.store.clip import clip
from kvmgr.store.db import Store
from kvmgr.store.models import Role, Task, aware, utcnow
from kvmgr.store.users import Principal

STATES = ("queued", "running", "done", "failed", "interrupted", "cancelled")
ACTIVE_STATES = ("queued", "running")
#: The host of tasks submitted before kvmgr knew several hosts.
DEFAULT_HOST = "local"


@dataclass
class TaskContext:
    """What a handler gets besides its params: the host's connection, the submitter (as they
    are now: a role lowered since submission counts), the control plane acting for them (leases,
    journal), the input checks, progress."""

    task_id: str
    kind: str
    host: str
    owner: Principal
    worker: str
    store: Store
    connect: Callable[[str], Connection]
    plane: ControlPlane
    state_dirs: tuple[str, ...] = ()
    report: Callable[[str, int | None], None] = field(default=lambda _message, _percent: None)
    #: Like ``report``, with the measurements behind the message (a migration's job stats),
    #: shown as the task's ``result.live`` while it runs so a page can draw numbers, not parse
    #: text; the handler's return value replaces them when it ends.
    measured: Callable[[str, int | None, dict[str, Any]], None] = field(
        default=lambda _message, _percent, _live: None
    )
    #: Set by the worker when someone cancels the running task (kinds in CANCELLABLE_KINDS).
    cancel: threading.Event = field(default_factory=threading.Event)

    def conn(self) -> Connection:
        return self.connect(self.host)

    def secrets(self) -> dict[str, str]:
        """The secrets the API stored with this task (kvmgr.control.task_secrets), deleted as
        they are read: the first call gets them, any later one an empty dict."""
        return task_secrets.take(self.store, self.task_id)

    def authz(self) -> Authz:
        """The submitter's permissions, checked again when the task runs (they may have changed
        since it was queued)."""
        return Authz(
            self.conn(), self.owner, self.store, host=self.host, state_dirs=self.state_dirs
        )


#: (context, params) -> result (JSON).  Raise a KvmgrError to fail the task with its message.
Handler = Callable[[TaskContext, dict[str, Any]], dict[str, Any]]

#: Every kind a task may name, by name ("vm.create", "snapshot.create", ...).
KINDS: dict[str, Handler] = {}
#: Kinds the control plane itself queues (a schedule's window): such a task has no submitting
#: user, runs as :func:`system_principal`, and its handler checks the rights of whoever made
#: the schedule when it runs.
SYSTEM_KINDS: set[str] = set()
#: Kinds that can stop half way and leave things as they were (a migration aborts its job and
#: the VM stays on the source): a cancel of such a running task asks its handler to stop.
CANCELLABLE_KINDS: set[str] = set()


def task_kind(
    name: str, *, system: bool = False, cancellable: bool = False
) -> Callable[[Handler], Handler]:
    """Register ``func`` as the handler of task kind ``name``; a ``cancellable`` handler
    watches ``ctx.cancel`` and, when it is set, stops and raises."""

    def register(func: Handler) -> Handler:
        if name in KINDS and KINDS[name] is not func:
            raise RuntimeError(f"task kind {name!r} registered twice")
        KINDS[name] = func
        if system:
            SYSTEM_KINDS.add(name)
        if cancellable:
            CANCELLABLE_KINDS.add(name)
        return func

    return register


def system_principal(kind: str, owner_id: int | None, owner: str) -> Principal | None:
    """The principal of a task the control plane queued itself (no user submitted it), or None
    for any other task.  Only a kind registered with ``system=True`` qualifies, and only with no
    owner id: an API user's task always runs with that user's rights."""
    if owner_id is None and kind in SYSTEM_KINDS:
        return Principal(id=0, name=owner, role=Role.admin, group=None)
    return None


@task_kind("noop")
def _noop(_ctx: TaskContext, _params: dict[str, Any]) -> dict[str, Any]:
    """Does nothing: measures the queue itself (bench/tasks.py) and checks a worker is alive."""
    return {}


def load_kinds() -> None:
    """Import the modules that register the handlers of the API's tasks."""
    import kvmgr.control.backup_schedules  # registers backup.scheduled
    import kvmgr.control.backup_tasks  # registers backup.create, .verify, .restore
    import kvmgr.control.moves  # registers vm.migrate and host.evacuate on import
    import kvmgr.control.task_kinds  # noqa: F401  - registers on import


def as_dict(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "kind": task.kind,
        "target": task.target,
        "owner": task.owner,
        "owner_id": task.owner_id,
        "host": task.host,
        "state": task.state,
        "progress": task.progress,
        "message": task.message,
        "result": task.result,
        "error": task.error,
        "attempts": task.attempts,
        "cancel_requested": bool(task.cancel_requested),
        "worker": task.claimed_by,
        "created": aware(task.created).isoformat(),
        "started": aware(task.started).isoformat() if task.started else None,
        "finished": aware(task.finished).isoformat() if task.finished else None,
    }


# ------------------------------------------------------------------------------ submitting
def submit(
    store: Store,
    kind: str,
    params: dict[str, Any],
    *,
    owner: Principal,
    target: str,
    host: str = DEFAULT_HOST,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Queue a task of ``kind``; returns its row as a dict (state ``queued``).  ``secrets``
    (values the handler needs in clear) wait in kvmgr.control.task_secrets, never in params."""
    with store.session() as session:
        return add_task(
            session, kind, params, owner=owner, target=target, host=host, secrets=secrets
        )


def add_task(
    session: Session,
    kind: str,
    params: dict[str, Any],
    *,
    owner: Principal,
    target: str,
    host: str = DEFAULT_HOST,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`submit` inside the caller's transaction: the task exists only if the rest of the
    transaction commits (a schedule's window and its task are written together), and so do its
    ``secrets``."""
    if kind not in KINDS:
        raise InvalidInput(f"unknown task kind {kind!r}", hint=f"one of {', '.join(sorted(KINDS))}")
    task = Task(
        id=str(uuid.uuid4()),
        kind=clip(Task, "kind", kind),
        target=clip(Task, "target", target),
        owner=clip(Task, "owner", owner.name),
        owner_id=owner.id if owner.id > 0 else None,  # the CLI's principal is no user
        host=clip(Task, "host", host),
        params=params,
        state="queued",
        progress=0,
        message="queued",
        attempts=0,
        created=utcnow(),
    )
    session.add(task)
    session.flush()
    if secrets:
        task_secrets.put(session, task.id, secrets)
    snapshot = as_dict(task)
    events.record_task(session, snapshot)
    notify.notify(session, notify.TASKS)  # PostgreSQL: wakes every worker on commit
    return snapshot


def submit_many(
    store: Store,
    kind: str,
    params: list[dict[str, Any]],
    *,
    owner: Principal,
    target: str,
    host: str = DEFAULT_HOST,
) -> list[str]:
    """Queue one task of ``kind`` per params, in one transaction (scripts, benchmarks); returns
    their ids.  No per-task event rows: one batch is not news for the UI, its progress is."""
    if kind not in KINDS:
        raise InvalidInput(f"unknown task kind {kind!r}", hint=f"one of {', '.join(sorted(KINDS))}")
    now = utcnow()
    rows = [
        Task(
            id=str(uuid.uuid4()),
            kind=kind,
            target=clip(Task, "target", target),
            owner=clip(Task, "owner", owner.name),
            owner_id=owner.id if owner.id > 0 else None,
            host=clip(Task, "host", host),
            params=one,
            state="queued",
            progress=0,
            message="queued",
            attempts=0,
            created=now,
        )
        for one in params
    ]
    with store.session() as session:
        session.add_all(rows)
        notify.notify(session, notify.TASKS)
    return [row.id for row in rows]


def cancel(store: Store, who: Principal, task_id: str) -> dict[str, Any]:
    """Cancel a task (its owner or an admin): a queued one at once; a running one only if its
    kind can stop half way (CANCELLABLE_KINDS), by asking its worker to stop it.  Any other
    running task must finish or be recovered: stopping it half way is what the journal exists
    to avoid."""
    with store.session() as session:
        task = get_task(session, who, task_id)
        if task.state == "running" and task.kind in CANCELLABLE_KINDS:
            return _request_cancel(session, who, task)
        if task.state != "queued":
            running = task.state == "running"
            raise InvalidInput(
                f"task {task_id} is {task.state}; only a queued task can be cancelled"
                + (f" ({task.kind} cannot stop half way)" if running else ""),
                hint="a running task finishes or, if its worker dies, is recovered; running "
                f"tasks of kinds {', '.join(sorted(CANCELLABLE_KINDS))} can be cancelled",
            )
        result = session.execute(
            update(Task)
            .where(Task.id == task_id, Task.state == "queued")
            .values(state="cancelled", message=f"cancelled by {who.name}", finished=utcnow())
        )
        if _rowcount(result) != 1:
            raise InvalidInput(f"task {task_id} was claimed meanwhile", hint="GET it again")
        task_secrets.drop(session, task_id)  # a cancelled task never runs: nothing may wait
        session.refresh(task)
        snapshot = as_dict(task)
        events.record_task(session, snapshot)
    return snapshot


def _request_cancel(session: Session, who: Principal, task: Task) -> dict[str, Any]:
    session.execute(
        update(Task)
        .where(Task.id == task.id, Task.state == "running")
        .values(cancel_requested=True, message=f"cancel requested by {who.name}")
    )
    session.refresh(task)
    snapshot = as_dict(task)
    events.record_task(session, snapshot)
    return snapshot


def cancels_requested(store: Store, worker: str, task_ids: Iterable[str]) -> set[str]:
    """Which of the running tasks ``worker`` holds someone asked to cancel."""
    ids = list(task_ids)
    if not ids:
        return set()
    with store.session() as session:
        rows = session.scalars(
            select(Task.id).where(
                Task.id.in_(ids), Task.claimed_by == worker, Task.cancel_requested.is_(True)
            )
        )
        return set(rows)


# ------------------------------------------------------------------------------ claiming
@dataclass
class Claimed:
    """A task this worker now holds (detached from any session)."""

    id: str
    kind: str
    target: str
    host: str
    owner_id: int | None
    owner: str
    params: dict[str, Any]


def claim(store: Store, worker: str) -> Claimed | None:
    """Take the oldest queued task for ``worker``; None when there is none."""
    if store.engine.dialect.name == "sqlite":
        with store.session() as session:
            # A plain read first, so idle workers never take SQLite's write lock.
            if session.scalar(select(Task.id).where(Task.state == "queued").limit(1)) is None:
                return None
    with store.session() as session:
        if session.get_bind().dialect.name == "sqlite":
            session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        # FOR UPDATE SKIP LOCKED on PostgreSQL (rows other claimers hold are passed over);
        # SQLite renders no locking clause and relies on the write lock taken above.
        candidate = (
            select(Task.id)
            .where(Task.state == "queued")
            .order_by(Task.created, Task.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        now = utcnow()
        task = session.scalars(
            update(Task)
            .where(Task.id == candidate, Task.state == "queued")
            .values(
                state="running",
                claimed_by=worker,
                heartbeat=now,
                started=now,
                attempts=Task.attempts + 1,
                message="started",
            )
            .returning(Task)
            .execution_options(synchronize_session=False)
        ).one_or_none()
        if task is None:
            return None
        events.record_task(session, as_dict(task))
        return Claimed(
            id=task.id,
            kind=task.kind,
            target=task.target,
            host=task.host or DEFAULT_HOST,
            owner_id=task.owner_id,
            owner=task.owner,
            params=dict(task.params or {}),
        )


def heartbeat(store: Store, worker: str, task_ids: Iterable[str]) -> None:
    ids = list(task_ids)
    if not ids:
        return
    with store.session() as session:
        session.execute(
            update(Task)
            .where(Task.id.in_(ids), Task.claimed_by == worker, Task.state == "running")
            .values(heartbeat=utcnow())
        )


def report(
    store: Store,
    worker: str,
    task_id: str,
    message: str,
    percent: int | None,
    *,
    live: dict[str, Any] | None = None,
) -> None:
    """A running task's progress; ``live`` (JSON) goes in its ``result`` as ``{"live": ...}``
    until the task ends (no column of its own: one task has one latest sample)."""
    values: dict[str, Any] = {"message": message[:2000], "heartbeat": utcnow()}
    if percent is not None:
        values["progress"] = max(0, min(100, percent))
    if live is not None:
        values["result"] = {"live": live}
    _update_held(store, worker, task_id, values)


def complete(
    store: Store,
    worker: str,
    task_id: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """Record the end of a task this worker holds; False if it was taken away meanwhile (marked
    interrupted after a heartbeat gap), in which case the recorded state stands."""
    cancelled = Task.cancel_requested.is_(True)
    values: dict[str, Any] = {
        # a handler that stopped on a cancel ends the task cancelled, not failed
        "state": case((cancelled, "cancelled"), else_="failed") if error is not None else "done",
        "message": case((cancelled, "cancelled"), else_="failed")
        if error is not None
        else "finished",
        "result": result,
        "error": error,
        "finished": utcnow(),
    }
    if error is None:
        values["progress"] = 100
    return _update_held(store, worker, task_id, values, ended=True)


def _update_held(
    store: Store, worker: str, task_id: str, values: dict[str, Any], *, ended: bool = False
) -> bool:
    with store.session() as session:
        task = session.scalars(
            update(Task)
            .where(Task.id == task_id, Task.claimed_by == worker, Task.state == "running")
            .values(**values)
            .returning(Task)
            .execution_options(synchronize_session=False)
        ).one_or_none()
        if task is None:
            return False
        if ended:  # secrets the handler did not take (it failed first) go with the task
            task_secrets.drop(session, task_id)
        events.record_task(session, as_dict(task))
    return True


# ------------------------------------------------------------------------------ dead workers
def stale(store: Store, *, older_than: timedelta, dead: Callable[[str], bool]) -> list[Claimed]:
    """Running tasks whose worker stopped: heartbeat older than ``older_than``, or ``dead``
    says its process is gone (a worker on this machine can tell at once)."""
    limit = utcnow() - older_than
    with store.session() as session:
        rows = session.scalars(select(Task).where(Task.state == "running")).all()
        return [
            Claimed(
                id=row.id,
                kind=row.kind,
                target=row.target,
                host=row.host or DEFAULT_HOST,
                owner_id=row.owner_id,
                owner=row.owner,
                params=dict(row.params or {}),
            )
            for row in rows
            if _older(row.heartbeat, limit) or (row.claimed_by is not None and dead(row.claimed_by))
        ]


def mark_interrupted(store: Store, task_id: str, why: str) -> bool:
    """``running`` -> ``interrupted`` (once: the row count tells the one reaper that won)."""
    with store.session() as session:
        result = session.execute(
            update(Task)
            .where(Task.id == task_id, Task.state == "running")
            .values(state="interrupted", error=why[:4000], message="interrupted", finished=utcnow())
        )
        if _rowcount(result) != 1:
            return False
        task_secrets.drop(session, task_id)  # never re-run: its secrets have no taker
        task = session.get(Task, task_id)
        if task is not None:
            session.refresh(task)
            events.record_task(session, as_dict(task))
    return True


def _older(moment: datetime | None, limit: datetime) -> bool:
    return moment is None or aware(moment) < limit


# ------------------------------------------------------------------------------ reading
def visible(who: Principal) -> Any:
    """The WHERE clause of the tasks ``who`` may see (None: all of them)."""
    if who.at_least(Role.admin):
        return None
    return Task.owner_id == who.id


def list_tasks(
    session: Session,
    who: Principal,
    *,
    owner: str | None = None,
    state: str | None = None,
    limit: int = 100,
) -> list[Task]:
    query = select(Task).order_by(Task.created.desc()).limit(limit)
    rule = visible(who)
    if rule is not None:
        query = query.where(rule)
    if owner is not None:
        query = query.where(Task.owner == owner)
    if state is not None:
        if state not in STATES:
            raise InvalidInput(f"unknown task state {state!r}", hint=f"one of {', '.join(STATES)}")
        query = query.where(Task.state == state)
    return list(session.scalars(query))


def get_task(session: Session, who: Principal, task_id: str) -> Task:
    """The task, if ``who`` may see it; another user's task is "not found", like a missing one,
    so that task ids of others cannot be probed."""
    task = session.get(Task, task_id)
    if task is None or not may_see(who, task.owner_id):
        raise NotFound(f"task {task_id!r} does not exist", hint="GET /api/v1/tasks lists yours")
    return task


def may_see(who: Principal, owner_id: int | None) -> bool:
    return who.at_least(Role.admin) or (owner_id is not None and owner_id == who.id)


def describe_error(err: BaseException) -> str:
    if isinstance(err, KvmgrError):
        return str(err)
    return f"internal error: {err.__class__.__name__}: {err}"


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
