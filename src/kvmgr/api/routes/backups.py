"""Backups over REST: the catalog, backup, verify, restore and delete of points, schedules and
retention policies.

Who may do what (docs/SECURITY.md): operators list the points of VMs they or their group own,
back those VMs up (default repository) and restore those points into new VMs of theirs; verify,
delete, schedules and policies are admins'.  Backups, verifies and restores are queued as tasks
(:mod:`kvmgr.control.backup_tasks`, which check the rights again when they run); the rest is one
call into the control plane on the request's plane.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmgr.api.context import AppContext
from kvmgr.api.deps import Admin, Ctx, Operator
from kvmgr.control import backup_policies
from kvmgr.control.backup_schedules import Schedules, scheduled_points
from kvmgr.control.backup_tasks import check_create
from kvmgr.control.backups import Backups, check_point_input
from kvmgr.errors import Forbidden
from kvmgr.services.backup.retention import Policy
from kvmgr.store.models import Role
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


class ScheduleCreate(BaseModel):
    vm: str | None = Field(default=None, min_length=1, max_length=64, description="None: --all")
    every: str = Field(default="1d", min_length=1, max_length=16, examples=["1d", "6h"])
    at: str | None = Field(default=None, max_length=5, examples=["02:00"])
    tz: str | None = Field(default=None, max_length=64, examples=["Europe/Paris"])
    repo: str | None = Field(default=None, max_length=64)


class PolicyBody(BaseModel):
    keep_last: int = Field(default=0, ge=0, le=10000)
    keep_daily: int = Field(default=0, ge=0, le=10000)
    keep_weekly: int = Field(default=0, ge=0, le=10000)


def _backups(ctx: AppContext, who: Principal) -> Backups:
    return Backups(ctx.plane_for(who))


def _task(
    ctx: AppContext, who: Principal, kind: str, target: str, params: dict[str, Any]
) -> dict[str, Any]:
    """Queue task ``kind`` (kvmgr.control.backup_tasks) for any worker."""
    ctx.audit(who, f"{kind}.request", target, "ok")
    return ctx.submit(who, kind, params, target)


@router.get("/backups", summary="Backup points and failed runs you may see, oldest first")
def list_points(who: Operator, ctx: Ctx, vm: str | None = None) -> list[dict[str, Any]]:
    backups = _backups(ctx, who)
    rows = backups.visible(who, backups.points(vm))
    taken_by = scheduled_points(ctx.store)
    for row in rows:
        row["by"] = f"schedule {taken_by[row['id']]}" if row["id"] in taken_by else None
    return rows


@router.get("/backups/overview", summary="Per VM: its newest good point and its failures")
def overview(who: Operator, ctx: Ctx) -> list[dict[str, Any]]:
    return _backups(ctx, who).overview(who)


@router.post("/vms/{name}/backups", status_code=202, summary="Back up a VM (a task)")
def create_backup(name: str, body: BackupCreate, who: Operator, ctx: Ctx) -> dict[str, Any]:
    is_admin = who.at_least(Role.admin)
    # Refused now with a 403 rather than as a failed task; the task checks again.
    check_create(ctx.authz(ctx.conn(), who) if not is_admin else None, is_admin, name, body.repo)
    return _task(ctx, who, "backup.create", name, {"vm": name, **body.model_dump()})


@router.post("/backups/{point}/verify", status_code=202, summary="Verify a point (a task)")
def verify_point(point: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    check_point_input(point)
    return _task(ctx, who, "backup.verify", point, {"point": point})


@router.post("/backups/{point}/restore", status_code=202, summary="Restore a point (a task)")
def restore_point(point: str, body: BackupRestore, who: Operator, ctx: Ctx) -> dict[str, Any]:
    check_point_input(point)
    backups = _backups(ctx, who)
    if not backups.may_restore(who, point):  # NotFound for a point not in the catalog
        raise Forbidden(
            f"user {who.name!r} ({who.role.value}) may not restore backup point {point!r}",
            hint="operators restore the points of VMs they or their group own; ask an admin",
        )
    return _task(ctx, who, "backup.restore", point, {"point": point, **body.model_dump()})


@router.delete("/backups/{point}", summary="Delete a point (data later points need stays)")
def delete_point(point: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    check_point_input(point)
    ctx.audited(who, "backup.delete", point, lambda: _backups(ctx, who).delete(point))
    return {"deleted": point}


# ------------------------------------------------------------------ schedules
@router.get("/backup-schedules", summary="Backup schedules, their next window and last run")
def list_schedules(who: Admin, ctx: Ctx) -> list[dict[str, Any]]:
    return Schedules(ctx.plane_for(who)).all()


@router.get("/backup-schedules/{schedule_id}/runs", summary="A schedule's runs, newest first")
def schedule_runs(schedule_id: int, who: Admin, ctx: Ctx) -> list[dict[str, Any]]:
    return Schedules(ctx.plane_for(who)).runs(schedule_id)


@router.post("/backup-schedules", status_code=201, summary="Schedule backups of a VM or all")
def add_schedule(body: ScheduleCreate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    schedules = Schedules(ctx.plane_for(who))
    target = body.vm or "--all"

    def add() -> dict[str, Any]:
        return schedules.add(
            ctx.host_name(),
            body.vm,
            every=body.every,
            at=body.at,
            tz=body.tz,
            repo=body.repo,
            who=who,
        )

    return ctx.audited(who, "backup.schedule.add", target, add)


@router.delete("/backup-schedules/{schedule_id}", summary="Remove a schedule (points stay)")
def remove_schedule(schedule_id: int, who: Admin, ctx: Ctx) -> dict[str, Any]:
    schedules = Schedules(ctx.plane_for(who))
    ctx.audited(
        who, "backup.schedule.remove", str(schedule_id), lambda: schedules.remove_id(schedule_id)
    )
    return {"removed": schedule_id}


# ------------------------------------------------------------------ policies
@router.get("/backup-policies", summary="Stored retention policies")
def list_policies(who: Admin, ctx: Ctx) -> list[dict[str, Any]]:
    return backup_policies.policies(ctx.store)


@router.put("/vms/{name}/backup-policy", summary="Store a VM's retention (applied after backups)")
def set_policy(name: str, body: PolicyBody, who: Admin, ctx: Ctx) -> dict[str, Any]:
    policy = Policy(body.keep_last, body.keep_daily, body.keep_weekly)  # InvalidInput: 422
    return ctx.audited(
        who,
        "backup.policy.set",
        name,
        lambda: backup_policies.set_policy(ctx.store, name, policy, by=who.name),
    )


@router.delete("/vms/{name}/backup-policy", summary="Forget a VM's retention policy")
def remove_policy(name: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    ctx.audited(
        who, "backup.policy.remove", name, lambda: backup_policies.remove_policy(ctx.store, name)
    )
    return {"removed": name}
