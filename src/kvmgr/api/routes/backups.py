"""Backups over REST: the catalog, and backup, verify, restore and delete of points.

Admins only for now: a point holds a whole VM's disks, and per-user ownership of points is not
recorded yet (docs/SECURITY.md).  Backups, verifies and restores run as tasks; each is one call
into :class:`kvmgr.control.backups.Backups` on the request's plane.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmgr.api.context import AppContext
from kvmgr.api.deps import Admin, Ctx
from kvmgr.control.backups import Backups, check_point_input
from kvmgr.store.tasks import Outcome, Report, Work
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


def _task(ctx: AppContext, who: Principal, action: str, target: str, work: Work) -> dict[str, Any]:
    def done(outcome: Outcome) -> None:
        ctx.audit(who, action, target, "ok" if outcome.ok else "error", outcome.error or "")

    return ctx.runner.submit(action, target, who.name, work, done)


@router.get("/backups", summary="Backup points and failed runs, oldest first")
def list_points(who: Admin, ctx: Ctx, vm: str | None = None) -> list[dict[str, Any]]:
    return _backups(ctx, who).points(vm)


@router.post("/vms/{name}/backups", status_code=202, summary="Back up a VM (a task)")
def create_backup(name: str, body: BackupCreate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(report: Report) -> dict[str, Any]:
        report(f"backing up {name}", 5)
        return _backups(ctx, who).create(
            ctx.host_name(),
            name,
            repo=body.repo,
            full=body.full,
            quiesce=body.quiesce,
            say=lambda message: report(message, None),
        )

    return _task(ctx, who, "backup.create", name, work)


@router.post("/backups/{point}/verify", status_code=202, summary="Verify a point (a task)")
def verify_point(point: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    check_point_input(point)

    def work(report: Report) -> dict[str, Any]:
        report(f"verifying {point}", 5)
        return _backups(ctx, who).verify(point)[0]

    return _task(ctx, who, "backup.verify", point, work)


@router.post("/backups/{point}/restore", status_code=202, summary="Restore a point (a task)")
def restore_point(point: str, body: BackupRestore, who: Admin, ctx: Ctx) -> dict[str, Any]:
    check_point_input(point)

    def work(report: Report) -> dict[str, Any]:
        report(f"restoring {point}", 5)
        return _backups(ctx, who).restore(
            ctx.host_name(),
            point,
            as_name=body.as_name,
            pool=body.pool,
            start=body.start,
            say=lambda message: report(message, None),
        )

    return _task(ctx, who, "backup.restore", point, work)


@router.delete("/backups/{point}", summary="Delete a point (data later points need stays)")
def delete_point(point: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    check_point_input(point)
    ctx.audited(who, "backup.delete", point, lambda: _backups(ctx, who).delete(point))
    return {"deleted": point}
