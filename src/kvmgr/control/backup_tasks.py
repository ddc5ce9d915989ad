"""The backup task kinds the API submits, run by whichever worker claims them.

Rights are checked again when the task runs (the submitter's role or the VM's owner may have
changed since it was queued): operators back up the VMs they (or their group) own, into the
default repository, and restore the points of VMs they owned when the point was taken, into a
new VM that is theirs, with every input of the restored definition (pool, networks, bridges,
CD-ROM files) checked as for a create; verify is admins'.  Each is one call into
:class:`kvmgr.control.backups.Backups` on the task's plane, which holds the leases and journals
the steps.
"""

from __future__ import annotations

from typing import Any

from kvmgr.control import ownership
from kvmgr.control.authz import check_definition
from kvmgr.control.backups import Backups, check_point_input
from kvmgr.control.tasks import TaskContext, task_kind
from kvmgr.errors import Forbidden
from kvmgr.store.models import Role
from kvmgr.xml.domain import Domain


def _backups(ctx: TaskContext) -> Backups:
    if not ctx.owner.at_least(Role.admin):
        raise Forbidden("verifying backups is admins' only", hint="ask an admin")
    return Backups(ctx.plane)


def _say(ctx: TaskContext) -> Any:
    return lambda message: ctx.report(message, None)


def check_create(ctx_authz: Any, admin: bool, vm: str, repo: str | None) -> None:
    """An operator backs up a VM they may act on, into the default repository only (another
    may be a share other teams read)."""
    if admin:
        return
    ctx_authz.vm(vm)
    if repo is not None:
        raise Forbidden(
            "operators back up into the default repository only",
            hint="leave the repository out, or ask an admin",
        )


def check_restore(backups: Backups, ctx: TaskContext, point: str, pool: str) -> None:
    """An operator restores a point they may act on, and may use every input it names."""
    if ctx.owner.at_least(Role.admin):
        return
    if not backups.may_restore(ctx.owner, point):
        raise Forbidden(
            f"user {ctx.owner.name!r} ({ctx.owner.role.value}) may not restore backup point "
            f"{point!r}",
            hint="operators restore the points of VMs they or their group own; ask an admin",
        )
    _row, repository = backups.point(point)
    spec = Domain.from_xml(repository.manifest(point)["vm"]["xml"])
    authz = ctx.authz()
    authz.pool(pool)
    authz.nics(
        ("bridge" if nic.type == "bridge" else "network", nic.source or "")
        for nic in spec.devices.interfaces
        if nic.type in ("bridge", "network")
    )
    if any(nic.type not in ("bridge", "network") for nic in spec.devices.interfaces):
        raise Forbidden(
            f"backup point {point!r} has a NIC of a kind only admins may give (direct, user)",
            hint="ask an admin to restore it",
        )
    restored = {disk["target"] for disk in repository.manifest(point)["disks"]}
    # The restored disks get new volumes in the pool checked above; any other file the
    # definition names (a CD-ROM, a disk left out of the backup) is checked as for a define.
    keep = [
        path
        for disk in spec.devices.disks
        if disk.target_dev in restored
        for path in (disk.source_file, disk.source_dev)
        if path
    ]
    check_definition(authz, spec, keep=keep)


@task_kind("backup.create")
def _create(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    vm = str(params["vm"])
    repo = params.get("repo")
    admin = ctx.owner.at_least(Role.admin)
    check_create(ctx.authz() if not admin else None, admin, vm, repo)
    ctx.report(f"backing up {vm}", 5)
    return Backups(ctx.plane).create(
        ctx.host,
        vm,
        repo=repo,
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
    backups = Backups(ctx.plane)
    point = check_point_input(str(params["point"]))
    pool = str(params.get("pool", "default"))
    check_restore(backups, ctx, point, pool)
    ctx.report(f"restoring {point}", 5)
    result = backups.restore(
        ctx.host,
        point,
        as_name=params.get("as_name"),
        pool=pool,
        start=bool(params.get("start", False)),
        say=_say(ctx),
    )
    # The new VM and its volumes are the restorer's, as a create's are.
    ownership.record_owner(
        ctx.store, "vm", result["uuid"], ctx.owner, label=result["name"], host=ctx.host
    )
    ownership.record_owners(
        ctx.store, "volume", list(result["disks"].values()), ctx.owner, host=ctx.host
    )
    return result
