"""Long operations and their progress (stored, so a reloaded page sees them).

Admins see every task; anyone else only the tasks they submitted (by user id).  Another user's
task answers 404, like a missing one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from kvmgr.api.deps import Ctx, Operator, Viewer
from kvmgr.control import tasks as task_queue

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])


@router.get("", summary="Recent tasks you may see (admins: all), newest first")
def list_tasks(
    who: Viewer,
    ctx: Ctx,
    owner: Annotated[str | None, Query(max_length=64)] = None,
    state: Annotated[str | None, Query(max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    with ctx.store.session() as session:
        rows = task_queue.list_tasks(session, who, owner=owner, state=state, limit=limit)
        return [task_queue.as_dict(task) for task in rows]


@router.get("/{task_id}", summary="One task: state, progress, result or error")
def get_task(task_id: str, who: Viewer, ctx: Ctx) -> dict[str, Any]:
    with ctx.store.session() as session:
        return task_queue.as_dict(task_queue.get_task(session, who, task_id))


@router.post("/{task_id}/cancel", summary="Cancel a queued task (yours, or any as admin)")
def cancel_task(task_id: str, who: Operator, ctx: Ctx) -> dict[str, Any]:
    return ctx.audited(
        who, "task.cancel", task_id, lambda: task_queue.cancel(ctx.store, who, task_id)
    )
