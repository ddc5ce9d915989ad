"""Long operations run as tasks: a row in the database that a worker thread keeps up to date.

The API answers at once with the task id; clients poll ``/api/v1/tasks/{id}`` or listen to the
event stream.  Because the state is in the database, a reloaded page (or another user) sees the
same progress, and a server restart marks what was running as ``interrupted``.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kvmgr.errors import KvmgrError, NotFound
from kvmgr.store.clip import clip
from kvmgr.store.db import Store
from kvmgr.store.models import Task, aware, utcnow

#: (message, percent or None) -> None
Report = Callable[[str, int | None], None]
Work = Callable[[Report], dict[str, Any]]
#: Called after every change of a task, from the worker thread (the event bus hops threads).
Listener = Callable[[dict[str, Any]], None]

ACTIVE_STATES = ("queued", "running")


def as_dict(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "kind": task.kind,
        "target": task.target,
        "owner": task.owner,
        "state": task.state,
        "progress": task.progress,
        "message": task.message,
        "result": task.result,
        "error": task.error,
        "created": aware(task.created).isoformat(),
        "finished": aware(task.finished).isoformat() if task.finished else None,
    }


@dataclass
class Outcome:
    """What a finished task hands to its ``on_done`` hook (e.g. to write the audit entry)."""

    ok: bool
    result: dict[str, Any] | None
    error: str | None


class TaskRunner:
    """Runs :data:`Work` in a small thread pool and keeps its row in ``store`` current."""

    def __init__(self, store: Store, *, workers: int = 2, listener: Listener | None = None) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kvmgr-task")
        self._listener = listener

    def mark_interrupted(self) -> int:
        """At start-up: tasks a previous server left running will never finish."""
        with self.store.session() as session:
            result = session.execute(
                update(Task)
                .where(Task.state.in_(ACTIVE_STATES))
                .values(state="interrupted", finished=utcnow(), error="the server stopped")
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def submit(
        self,
        kind: str,
        target: str,
        owner: str,
        work: Work,
        on_done: Callable[[Outcome], None] | None = None,
    ) -> dict[str, Any]:
        task_id = str(uuid.uuid4())
        with self.store.session() as session:
            task = Task(
                id=task_id,
                kind=clip(Task, "kind", kind),
                target=clip(Task, "target", target),
                owner=clip(Task, "owner", owner),
                state="queued",
            )
            session.add(task)
            session.flush()
            snapshot = as_dict(task)
        self._notify(snapshot)
        # The task runs in the submitting request's context: its host (?host=) goes with it.
        context = contextvars.copy_context()
        future: Future[None] = self._pool.submit(context.run, self._run, task_id, work, on_done)
        del future  # the row is the record; the future is not needed
        return snapshot

    def _run(self, task_id: str, work: Work, on_done: Callable[[Outcome], None] | None) -> None:
        self._update(task_id, state="running", message="started")

        def report(message: str, percent: int | None) -> None:
            values: dict[str, Any] = {"message": message[:2000]}
            if percent is not None:
                values["progress"] = max(0, min(100, percent))
            self._update(task_id, **values)

        try:
            result = work(report)
        except KvmgrError as err:
            outcome = Outcome(False, None, str(err))
        except Exception as err:  # a bug in a task must still end the task, not hang it
            outcome = Outcome(False, None, f"internal error: {err.__class__.__name__}: {err}")
        else:
            outcome = Outcome(True, result, None)
        self._update(
            task_id,
            state="done" if outcome.ok else "failed",
            progress=100 if outcome.ok else None,
            result=outcome.result,
            error=outcome.error,
            finished=utcnow(),
            message="finished" if outcome.ok else "failed",
        )
        if on_done is not None:
            on_done(outcome)

    def _update(self, task_id: str, **values: Any) -> None:
        values = {key: value for key, value in values.items() if value is not None}
        with self.store.session() as session:
            task = session.get(Task, task_id)
            if task is None:
                return
            for key, value in values.items():
                setattr(task, key, value)
            session.flush()
            snapshot = as_dict(task)
        self._notify(snapshot)

    def _notify(self, snapshot: dict[str, Any]) -> None:
        if self._listener is not None:
            self._listener(snapshot)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def list_tasks(session: Session, owner: str | None = None, limit: int = 100) -> list[Task]:
    query = select(Task).order_by(Task.created.desc()).limit(limit)
    if owner is not None:
        query = query.where(Task.owner == owner)
    return list(session.scalars(query))


def get_task(session: Session, task_id: str) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"task {task_id!r} does not exist", hint="GET /api/v1/tasks lists them")
    return task
