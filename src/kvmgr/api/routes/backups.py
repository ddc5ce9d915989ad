"""Backups over REST: the catalog, and backup, verify, restore and delete of points.

Admins only for now: a point holds a whole VM's disks, and per-user ownership of points is not
recorded yet (docs/SECURITY.md).  Backups, verifies and restores are queued as tasks
(:mod:`kvmgr.control.backup_tasks`); listing and deleting are one call into
:class:`kvmgr.control.backups.Backups` on the request's plane.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmgr.api.context import AppContext
from kvmgr.api.deps import Admin, Ctx
from kvmgr.control.backups import Backups, check_point_input
from kvmgr.store.users import Principal

router = APIRouter(prefix="/api/v1", tags=["backups"])


class BackupCreate(BaseModel):
    full: bool = False
    quiesce: bool = False
    repo: str | None = Field(default=None, max_length=64)


class BackupRestore(BaseModel):
    as_name: str | None = Field(default=None, min_length=1, max_length=64)
    pool: str = Field(default="default", min_length=1, max_length=64)
    start: bool = False


def _backups(ctx: AppContext, who: Principal) -> Backups:
    return Backups(ctx.plane_for(who))


def _task(
    ctx: AppContext, who: Principal, kind: str, target: str, params: dict[str, Any]
) -> dict[str, Any]:
    """Queue task ``kind`` (kvmgr.control.backup_tasks) for any worker."""
    ctx.audit(who, f"{kind}.request", target, "ok")
    return ctx.submit(who, kind, params, target)


@router.get("/backups", summary="Backup points and failed runs, oldest first")
def list_points(who: Admin, ctx: Ctx, vm: str | None = None) -> list[dict[str, Any]]:
    return _backups(ctx, who).points(vm)


@router.post("/vms/{name}/backups", status_code=202, summary="Back up a VM (a task)")
def create_backup(name: str, body: BackupCreate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    return _task(ctx, who, "backup.create", name, {"vm": name, **body.model_dump()})


@router.post("/backups/{point}/verify", status_code=202, summary="Verify a point (a task)")
def verify_point(point: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    check_point_input(point)
    return _task(ctx, who, "backup.verify", point, {"point": point})


@router.post("/backups/{point}/restore", status_code=202, summary="Restore a point (a task)")
def restore_point(point: str, body: BackupRestore, who: Admin, ctx: Ctx) -> dict[str, Any]:
    check_point_input(point)
    return _task(ctx, who, "backup.restore", point, {"point": point, **body.model_dump()})


@router.delete("/backups/{point}", summary="Delete a point (data later points need stays)")
def delete_point(point: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    check_point_input(point)
    ctx.audited(who, "backup.delete", point, lambda: _backups(ctx, who).delete(point))
    return {"deleted": point}
