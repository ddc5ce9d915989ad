"""Snapshots of a VM (create/revert/delete run as tasks) and clones of it (a task)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmgr.api.context import AppContext
from kvmgr.api.deps import Ctx, Operator, Viewer
from kvmgr.control import ownership
from kvmgr.errors import Busy
from kvmgr.names import validate_name
from kvmgr.services import clones as clone_service
from kvmgr.services import snapshots as snap_service
from kvmgr.store.tasks import Outcome, Report, Work
from kvmgr.store.users import Principal

router = APIRouter(prefix="/api/v1/vms", tags=["snapshots"])


class SnapshotCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = Field(default=None, max_length=1000)
    live: bool = False
    disk_only: bool = False


class CloneCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    linked: bool = False
    start: bool = False
    snapshot: str | None = Field(default=None, max_length=64)


def _task(
    ctx: AppContext,
    who: Principal,
    vm: str,
    action: str,
    target: str,
    work: Work,
    names: tuple[tuple[str | None, str], ...] = (),
    *,
    clone: bool = False,
) -> dict[str, Any]:
    """Check the new ``names`` (value, what), ownership and that the VM is not busy now, so a
    refusal is a 422, 403 or 409 at once rather than a failed task later; then run ``work`` as a
    task under the VM's lease (taken in the task: the check above may race another process)."""

    def check() -> None:
        for value, what in names:
            if value is not None:
                validate_name(value, what=what)
        authz = ctx.authz(ctx.conn(), who)
        if clone:
            authz.clone_source(vm)
        else:
            authz.vm(vm)
        busy = ctx.busy(vm)
        if busy is not None:
            raise Busy(
                f"VM {vm} is busy: {busy}", hint="wait until that operation ends and try again"
            )

    ctx.audited(who, f"{action}.request", target, check)

    def leased(report: Report) -> dict[str, Any]:
        with ctx.vm_lease(who, vm, f"{action} {target}"):
            return work(report)

    def done(outcome: Outcome) -> None:
        ctx.audit(who, action, target, "ok" if outcome.ok else "error", outcome.error or "")

    return ctx.runner.submit(action, target, who.name, leased, done)


@router.get("/{name}/snapshots", summary="The VM's snapshots (parent and children give the tree)")
def list_snapshots(name: str, _who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return [snap.as_dict() for snap in snap_service.list_snapshots(ctx.conn(), name)]


@router.get("/{name}/snapshots/{snapshot}", summary="One snapshot")
def snapshot_info(name: str, snapshot: str, _who: Viewer, ctx: Ctx) -> dict[str, Any]:
    return snap_service.snapshot_info(ctx.conn(), name, snapshot).as_dict()


@router.post("/{name}/snapshots", status_code=202, summary="Take a snapshot (a task)")
def create_snapshot(name: str, body: SnapshotCreate, who: Operator, ctx: Ctx) -> dict[str, Any]:
    def work(report: Report) -> dict[str, Any]:
        report(f"taking snapshot {body.name}", 10)
        uuid = ctx.vm_uuid(ctx.conn(), name)
        made = snap_service.create_snapshot(
            ctx.conn(),
            name,
            body.name,
            description=body.description,
            live=body.live,
            disk_only=body.disk_only,
        ).as_dict()
        ownership.record_owner(
            ctx.store, "snapshot", f"{uuid}/{body.name}", who, host=ctx.host_name()
        )
        return made

    names = ((body.name, "snapshot name"),)
    return _task(ctx, who, name, "snapshot.create", f"{name}/{body.name}", work, names)


@router.post(
    "/{name}/snapshots/{snapshot}/revert", status_code=202, summary="Revert to a snapshot (task)"
)
def revert_snapshot(
    name: str, snapshot: str, who: Operator, ctx: Ctx, force: bool = False
) -> dict[str, Any]:
    def work(report: Report) -> dict[str, Any]:
        report(f"reverting to {snapshot}", 10)
        return snap_service.revert_snapshot(ctx.conn(), name, snapshot, force=force).as_dict()

    return _task(ctx, who, name, "snapshot.revert", f"{name}/{snapshot}", work)


@router.delete("/{name}/snapshots/{snapshot}", status_code=202, summary="Delete a snapshot (task)")
def delete_snapshot(
    name: str, snapshot: str, who: Operator, ctx: Ctx, children: bool = False
) -> dict[str, Any]:
    def work(report: Report) -> dict[str, Any]:
        report(f"deleting {snapshot}", 10)
        uuid = ctx.vm_uuid(ctx.conn(), name)
        deleted = snap_service.delete_snapshot(ctx.conn(), name, snapshot, children=children)
        for gone in deleted:
            ownership.forget_owner(ctx.store, "snapshot", f"{uuid}/{gone}", host=ctx.host_name())
        return {"deleted": deleted}

    return _task(ctx, who, name, "snapshot.delete", f"{name}/{snapshot}", work)


@router.post("/{name}/clone", status_code=202, summary="Clone the VM (full or linked; a task)")
def clone_vm(name: str, body: CloneCreate, who: Operator, ctx: Ctx) -> dict[str, Any]:
    def work(report: Report) -> dict[str, Any]:
        report(f"cloning {name} to {body.name}", 10)
        with ctx.name_lease(who, body.name, f"clone of {name}"):
            result = clone_service.clone_vm(
                ctx.conn(),
                name,
                body.name,
                linked=body.linked,
                start=body.start,
                snapshot=body.snapshot,
            )
        ownership.record_owner(
            ctx.store, "vm", result.uuid, who, label=result.name, host=ctx.host_name()
        )
        return result.as_dict()

    names = ((body.name, "VM name"), (body.snapshot, "snapshot name"))
    return _task(ctx, who, name, "vm.clone", f"{name}->{body.name}", work, names, clone=True)
