"""Snapshots of a VM (create/revert/delete run as tasks) and clones of it (a task)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmgr.api.context import AppContext
from kvmgr.api.deps import Ctx, Operator, Viewer
from kvmgr.errors import Busy
from kvmgr.names import validate_name
from kvmgr.services import snapshots as snap_service
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
    kind: str,
    target: str,
    params: dict[str, Any],
    names: tuple[tuple[str | None, str], ...] = (),
    *,
    clone: bool = False,
) -> dict[str, Any]:
    """Check the new ``names`` (value, what), ownership and that the VM is not busy now, so a
    refusal is a 422, 403 or 409 at once rather than a failed task later; then queue task
    ``kind``.  The worker takes the VM's lease when it runs (the check above may race another
    process) and checks ownership again."""

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

    ctx.audited(who, f"{kind}.request", target, check)
    return ctx.submit(who, kind, {"vm": vm, **params}, target)


@router.get("/{name}/snapshots", summary="The VM's snapshots (parent and children give the tree)")
def list_snapshots(name: str, _who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return [snap.as_dict() for snap in snap_service.list_snapshots(ctx.conn(), name)]


@router.get("/{name}/snapshots/{snapshot}", summary="One snapshot")
def snapshot_info(name: str, snapshot: str, _who: Viewer, ctx: Ctx) -> dict[str, Any]:
    return snap_service.snapshot_info(ctx.conn(), name, snapshot).as_dict()


@router.post("/{name}/snapshots", status_code=202, summary="Take a snapshot (a task)")
def create_snapshot(name: str, body: SnapshotCreate, who: Operator, ctx: Ctx) -> dict[str, Any]:
    names = ((body.name, "snapshot name"),)
    target = f"{name}/{body.name}"
    return _task(ctx, who, name, "snapshot.create", target, body.model_dump(), names)


@router.post(
    "/{name}/snapshots/{snapshot}/revert", status_code=202, summary="Revert to a snapshot (task)"
)
def revert_snapshot(
    name: str, snapshot: str, who: Operator, ctx: Ctx, force: bool = False
) -> dict[str, Any]:
    params = {"snapshot": snapshot, "force": force}
    return _task(ctx, who, name, "snapshot.revert", f"{name}/{snapshot}", params)


@router.delete("/{name}/snapshots/{snapshot}", status_code=202, summary="Delete a snapshot (task)")
def delete_snapshot(
    name: str, snapshot: str, who: Operator, ctx: Ctx, children: bool = False
) -> dict[str, Any]:
    params = {"snapshot": snapshot, "children": children}
    return _task(ctx, who, name, "snapshot.delete", f"{name}/{snapshot}", params)


@router.post("/{name}/clone", status_code=202, summary="Clone the VM (full or linked; a task)")
def clone_vm(name: str, body: CloneCreate, who: Operator, ctx: Ctx) -> dict[str, Any]:
    names = ((body.name, "VM name"), (body.snapshot, "snapshot name"))
    target = f"{name}->{body.name}"
    return _task(ctx, who, name, "vm.clone", target, body.model_dump(), names, clone=True)
