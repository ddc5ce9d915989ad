"""The task kinds the API submits: each runs the same service call the route used to run in a
thread, now in whichever worker claims it, from JSON params.

Params are the request bodies, already checked by the route (a bad request is a 422 or 403 at
once); the handler checks them again, as the submitter is now, because a row in the queue is input
like any other and rights may have changed since.  Each handler holds the leases the route used
to take (the VM's, or the new name's) through the control plane, acting for the submitter.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any

from kvmgr.control import ownership
from kvmgr.control.authz import check_vm_spec
from kvmgr.control.plane import vm_name_key
from kvmgr.control.tasks import TaskContext, task_kind
from kvmgr.errors import InvalidInput
from kvmgr.names import validate_name
from kvmgr.services import clones as clone_service
from kvmgr.services import create as create_service
from kvmgr.services import isos as iso_service
from kvmgr.services import snapshots as snap_service
from kvmgr.services import vms
from kvmgr.services.steps import Steps
from kvmgr.units import parse_size


def vm_spec(params: dict[str, Any]) -> create_service.VMSpec:
    """The VM creation request (``POST /api/v1/vms``'s body) as a :class:`VMSpec`."""
    name = _text(params, "name")
    validate_name(name, what="VM name")
    texts = [str(text) for text in params.get("disks", ["default"])]
    disks = [create_service.parse_disk_option(text) for text in texts if text != "default"]
    nics = [create_service.parse_network_option(str(text)) for text in params.get("networks", [])]
    memory = params.get("memory")
    spec = create_service.VMSpec(
        name=name,
        iso=params.get("iso"),
        os=str(params.get("os", "auto")),
        memory=parse_size(str(memory), what="memory", default_unit="M") if memory else None,
        vcpus=params.get("vcpus"),
        nics=[nic for nic in nics if nic is not None],
        graphics=params.get("graphics", "vnc"),
        firmware=params.get("firmware", "bios"),
        start=bool(params.get("start", True)),
        wait="none" if params.get("wait") == "installed" else params.get("wait", "none"),
    )
    if "default" not in texts:
        spec.disks = [disk for disk in disks if disk is not None]
    return spec


@task_kind("vm.create")
def _vm_create(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    secrets = ctx.secrets()  # taken (deleted) first, whatever happens next
    spec = vm_spec(params)
    taken = check_vm_spec(ctx.authz(), spec)
    steps = iter(range(10, 95, 10))

    def progress(message: str) -> None:
        ctx.report(message, next(steps, 95))

    from kvmgr.services.provision import provision, wants_provision

    key = vm_name_key(ctx.host, spec.name)
    with ctx.plane.operation("create", spec.name, ctx.host, [key], say=progress) as journal:
        if wants_provision(params):  # unattended install or cloud image (issue 13)
            data, result = provision(
                ctx.conn(), spec, params, progress, steps=journal, secrets=secrets
            )
        else:
            result = create_service.create_vm(ctx.conn(), spec, progress, steps=journal)
            data = asdict(result)
    ownership.record_owner(
        ctx.store, "vm", result.uuid, ctx.owner, label=result.name, host=ctx.host
    )
    ownership.record_owners(
        ctx.store, "volume", [*result.volumes, *taken], ctx.owner, host=ctx.host
    )
    return data


@task_kind("vm.clone")
def _vm_clone(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    source, name = _text(params, "vm"), _text(params, "name")
    validate_name(name, what="VM name")
    ctx.authz().clone_source(source)
    ctx.report(f"cloning {source} to {name}", 10)
    with (
        _vm_lease(ctx, source, f"vm.clone {source}->{name}"),
        ctx.plane.operation(
            "clone",
            f"{source}->{name}",
            ctx.host,
            [ctx.plane.vm_key(ctx.host, source), vm_name_key(ctx.host, name)],
        ) as steps,
    ):
        result = clone_service.clone_vm(
            ctx.conn(),
            source,
            name,
            linked=bool(params.get("linked", False)),
            start=bool(params.get("start", False)),
            snapshot=params.get("snapshot"),
            steps=steps,
        )
    ownership.record_owner(
        ctx.store, "vm", result.uuid, ctx.owner, label=result.name, host=ctx.host
    )
    return result.as_dict()


@task_kind("snapshot.create")
def _snapshot_create(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    vm, name = _text(params, "vm"), _text(params, "name")
    validate_name(name, what="snapshot name")
    ctx.authz().vm(vm)
    ctx.report(f"taking snapshot {name}", 10)
    with (
        _vm_lease(ctx, vm, f"snapshot.create {vm}/{name}"),
        _operation(ctx, "snapshot create", vm, name) as steps,
    ):
        uuid = _uuid(ctx, vm)
        made = snap_service.create_snapshot(
            ctx.conn(),
            vm,
            name,
            description=params.get("description"),
            live=bool(params.get("live", False)),
            disk_only=bool(params.get("disk_only", False)),
            steps=steps,
        ).as_dict()
    ownership.record_owner(ctx.store, "snapshot", f"{uuid}/{name}", ctx.owner, host=ctx.host)
    return made


@task_kind("snapshot.revert")
def _snapshot_revert(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    vm, name = _text(params, "vm"), _text(params, "snapshot")
    ctx.authz().vm(vm)
    ctx.report(f"reverting to {name}", 10)
    force = bool(params.get("force", False))
    with (
        _vm_lease(ctx, vm, f"snapshot.revert {vm}/{name}"),
        _operation(ctx, "snapshot revert", vm, name) as steps,
    ):
        return snap_service.revert_snapshot(
            ctx.conn(), vm, name, force=force, steps=steps
        ).as_dict()


@task_kind("snapshot.delete")
def _snapshot_delete(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    vm, name = _text(params, "vm"), _text(params, "snapshot")
    ctx.authz().vm(vm)
    ctx.report(f"deleting {name}", 10)
    children = bool(params.get("children", False))
    with (
        _vm_lease(ctx, vm, f"snapshot.delete {vm}/{name}"),
        _operation(ctx, "snapshot delete", vm, name) as steps,
    ):
        uuid = _uuid(ctx, vm)
        deleted = snap_service.delete_snapshot(ctx.conn(), vm, name, children=children, steps=steps)
    for gone in deleted:
        ownership.forget_owner(ctx.store, "snapshot", f"{uuid}/{gone}", host=ctx.host)
    return {"deleted": deleted}


@task_kind("iso.import")
def _iso_import(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    def progress(done: int, total: int) -> None:
        ctx.report(f"uploaded {done} of {total} bytes", done * 100 // total if total else None)

    import os

    from kvmgr.control.objects import iso_key

    name = params.get("name")
    source = ctx.authz().import_source(_text(params, "path"))
    label = str(name or os.path.basename(source))  # the service's default name, for the key
    key = iso_key(ctx.host, label)
    with ctx.plane.operation("iso import", label, ctx.host, [key]) as steps:
        info = iso_service.import_iso(ctx.conn(), source, name, progress=progress, steps=steps)
    ownership.record_owner(ctx.store, "iso", info.name, ctx.owner, host=ctx.host)
    return asdict(info)


#: Seconds a task waits for its VM's lease: it is queued work, so another operation on the VM
#: delays it rather than failing it (the route already answered 409 if the VM was busy then).
LEASE_WAIT = 300.0


def _vm_lease(ctx: TaskContext, vm: str, operation: str) -> AbstractContextManager[None]:
    """VM ``vm``'s lease for the submitter, waited for up to :data:`LEASE_WAIT`."""
    return ctx.plane.lease(ctx.plane.vm_key(ctx.host, vm), operation, wait=True, timeout=LEASE_WAIT)


def _operation(
    ctx: TaskContext, kind: str, vm: str, snapshot: str
) -> AbstractContextManager[Steps]:
    """The journaled operation on VM ``vm`` (whose lease the caller holds already): a worker
    killed inside leaves what the next process's recovery undoes or finishes."""
    key = ctx.plane.vm_key(ctx.host, vm)
    return ctx.plane.operation(kind, f"{vm}/{snapshot}", ctx.host, [key])


def _uuid(ctx: TaskContext, vm: str) -> str:
    return str(vms.lookup(ctx.conn(), vm).UUIDString())


def _text(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"task parameter {key!r} is missing", hint="resubmit the request")
    return value
