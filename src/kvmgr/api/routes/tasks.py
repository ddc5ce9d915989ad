"""Long operations and their progress (stored, so a reloaded page sees them)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from kvmgr.api.deps import Ctx, Viewer
from kvmgr.store import tasks as tasks_store

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])


@router.get("", summary="Recent tasks, newest first")
def list_tasks(
    _who: Viewer,
    ctx: Ctx,
    owner: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    with ctx.store.session() as session:
        return [
            tasks_store.as_dict(task)
            for task in tasks_store.list_tasks(session, owner=owner, limit=limit)
        ]


@router.get("/{task_id}", summary="One task: state, progress, result or error")
def get_task(task_id: str, _who: Viewer, ctx: Ctx) -> dict[str, Any]:
    with ctx.store.session() as session:
        return tasks_store.as_dict(tasks_store.get_task(session, task_id))
