"""The backup task kinds the API submits, run by whichever worker claims them.

Admins only, checked again when the task runs (the submitter's role may have been lowered since
it was queued); each is one call into :class:`kvmgr.control.backups.Backups` on the task's plane,
which holds the leases and journals the steps.
"""

from __future__ import annotations

from typing import Any

from kvmgr.control.backups import Backups, check_point_input
from kvmgr.control.tasks import TaskContext, task_kind
from kvmgr.errors import Forbidden
from kvmgr.store.models import Role


def _backups(ctx: TaskContext) -> Backups:
    if not ctx.owner.at_least(Role.admin):
        raise Forbidden("backups are admins' only", hint="ask an admin")
    return Backups(ctx.plane)


def _say(ctx: TaskContext) -> Any:
    return lambda message: ctx.report(message, None)


@task_kind("backup.create")
def _create(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    backups = _backups(ctx)
    ctx.report(f"backing up {params['vm']}", 5)
    return backups.create(
        ctx.host,
        str(params["vm"]),
        repo=params.get("repo"),
        full=bool(params.get("full", False)),
        quiesce=bool(params.get("quiesce", False)),
        say=_say(ctx),
    )


@task_kind("backup.verify")
def _verify(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    backups = _backups(ctx)
    point = check_point_input(str(params["point"]))
    ctx.report(f"verifying {point}", 5)
    return backups.verify(point)[0]


@task_kind("backup.restore")
def _restore(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    backups = _backups(ctx)
    point = check_point_input(str(params["point"]))
    ctx.report(f"restoring {point}", 5)
    return backups.restore(
        ctx.host,
        point,
        as_name=params.get("as_name"),
        pool=str(params.get("pool", "default")),
        start=bool(params.get("start", False)),
        say=_say(ctx),
    )
