"""VMs: inventory, details, creation (a task), power actions, resources, delete."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field, SecretStr

from kvmgr.api.context import AppContext
from kvmgr.api.deps import Ctx, Operator, Viewer
from kvmgr.api.memory import after_big_answer as release_after_big_answer
from kvmgr.connect import Connection
from kvmgr.control import ownership, task_kinds
from kvmgr.control.authz import check_vm_spec
from kvmgr.control.objects import net_key
from kvmgr.errors import InvalidInput
from kvmgr.services import resources as resources_service
from kvmgr.services import vms as vms_service
from kvmgr.services.create import check_request
from kvmgr.store.users import Principal
from kvmgr.units import parse_size

router = APIRouter(prefix="/api/v1/vms", tags=["vms"])

Action = Literal["start", "shutdown", "reboot", "reset", "off", "pause", "resume"]


class Unattended(BaseModel):
    """``vm create --unattended``: passwords as values.  For Linux they are hashed at once and
    never stored; Windows needs them in clear, so for a Windows target they and the product key
    wait for the worker as the task's secrets (kvmgr.control.task_secrets), never in params."""

    user: str | None = Field(default=None, max_length=32)
    password: SecretStr | None = None
    root_password: SecretStr | None = None
    ssh_keys: list[str] = Field(default_factory=list, max_length=32)
    hostname: str | None = Field(default=None, max_length=63)
    timezone: str = Field(default="UTC", max_length=64)
    locale: str = Field(default="en_US", max_length=16)
    packages: list[str] = Field(default_factory=list, max_length=256)
    profile: Literal["minimal", "desktop"] = "minimal"
    #: Windows only (refused for any other target): a task secret, like Windows' passwords.
    product_key: SecretStr | None = Field(default=None, max_length=29)


class CloudInit(BaseModel):
    """``vm create --image --cloud-init``: user-data and network-config as text."""

    user: str | None = Field(default=None, max_length=32)
    password: SecretStr | None = None
    ssh_keys: list[str] = Field(default_factory=list, max_length=32)
    hostname: str | None = Field(default=None, max_length=63)
    user_data: str | None = Field(default=None, max_length=1024 * 1024)
    network_config: str | None = Field(default=None, max_length=1024 * 1024)


class VMCreate(BaseModel):
    """Like ``kvmgr vm create``: sizes as text (``2G``), disks and NICs as the CLI takes them."""

    name: str = Field(min_length=1, max_length=64)
    iso: str | None = Field(default=None, max_length=4096)
    os: str = Field(default="auto", max_length=100)
    memory: str | None = Field(default=None, max_length=32, examples=["1G"])
    vcpus: int | None = Field(default=None, ge=1, le=4096)
    disks: list[str] = Field(default_factory=lambda: ["default"], max_length=16)
    networks: list[str] = Field(default_factory=lambda: ["default"], max_length=16)
    graphics: Literal["vnc", "none"] = "vnc"
    firmware: Literal["bios", "uefi"] = "bios"
    start: bool = True
    wait: Literal["ready", "ip", "installed", "none"] = "none"
    unattended: Unattended | None = Field(
        default=None, description="install the ISO's OS with an install script (issue 13)"
    )
    image: str | None = Field(default=None, max_length=64, description="cloud image, not iso")
    cloud_init: CloudInit | None = Field(default=None, description="NoCloud seed (with image)")


#: What a Windows create hands its worker as task secrets, by field name.
WINDOWS_SECRETS = ("password", "root_password", "product_key")


def hashed_provision_params(
    unattended: Unattended | None, cloud_init: CloudInit | None
) -> dict[str, Any]:
    """The ``unattended``/``cloud_init`` parts of a create, with SHA-512 crypt hashes in place
    of the passwords (``password_hash``, ``root_password_hash``): any target but Windows."""
    from kvmgr.crypt import sha512_crypt

    if unattended is not None and unattended.product_key is not None:
        raise InvalidInput(
            "a product key is for Windows installs, and this create does not install Windows",
            hint="leave product_key out; for a Windows ISO kvmgr does not recognise, name the "
            "OS with os (e.g. win10, win2k22: GET /api/v1/isos shows what was detected)",
        )
    out: dict[str, Any] = {}
    for key, part in (("unattended", unattended), ("cloud_init", cloud_init)):
        if part is None:
            continue
        data = part.model_dump(exclude={"password", "root_password", "product_key"})
        for field in ("password", "root_password"):
            secret = getattr(part, field, None)
            if secret is not None:
                data[f"{field}_hash"] = sha512_crypt(secret.get_secret_value())
        out[key] = data
    return out


def windows_provision_params(
    unattended: Unattended, vm_name: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """A Windows create's ``unattended`` part without its secrets (``secrets`` names them), and
    the secrets, checked as Windows Setup will need them (a bad one is a 422, not a failed
    task)."""
    from kvmgr.services.windows_unattend import (
        computer_name,
        product_key,
        windows_language,
        windows_timezone,
    )

    if not unattended.user:
        raise InvalidInput(
            "a Windows install needs a user",
            hint="set unattended.user: Setup logs that user on once, which ends the install",
        )
    if unattended.ssh_keys or unattended.packages:
        raise InvalidInput(
            "ssh_keys and packages have no meaning for a Windows install", hint="leave them out"
        )
    computer_name(unattended.hostname or vm_name)  # the VM's name when none is given
    windows_timezone(unattended.timezone)
    windows_language(unattended.locale)
    secrets: dict[str, str] = {}
    for field in WINDOWS_SECRETS:
        secret = getattr(unattended, field)
        if secret is not None and secret.get_secret_value():
            secrets[field] = secret.get_secret_value()
    if "product_key" in secrets:
        secrets["product_key"] = product_key(secrets["product_key"])  # a bad key is a 422 now
    data = unattended.model_dump(exclude=set(WINDOWS_SECRETS))
    data["secrets"] = sorted(secrets)  # names only: the handler checks it got each of them
    return data, secrets


class Resize(BaseModel):
    vcpus: int | None = Field(default=None, ge=1, le=4096)
    memory: str | None = Field(default=None, max_length=32)
    live: bool = False
    config: bool = False


class DiskAdd(BaseModel):
    size: str | None = Field(default=None, max_length=32)
    path: str | None = Field(default=None, max_length=4096)
    pool: str = Field(default="default", max_length=64)
    format: Literal["qcow2", "raw"] = "qcow2"
    bus: Literal["virtio", "scsi", "sata", "usb"] = "virtio"


class DiskResize(BaseModel):
    size: str = Field(min_length=1, max_length=32, examples=["20G"])


class NicAdd(BaseModel):
    network: str | None = Field(default=None, max_length=64)
    bridge: str | None = Field(default=None, max_length=15)
    model: str | None = Field(default=None, max_length=16)
    mac: str | None = Field(default=None, max_length=17)


class Autostart(BaseModel):
    enabled: bool


# ---------------------------------------------------------------------------------- reading
def _with_owners(
    ctx: AppContext, who: Principal, rows: list[dict[str, Any]], host: str | None = None
) -> None:
    """Add each VM's owner and whether the caller may act on it (the UI shows buttons by it)."""
    owners = ownership.owners_of_kind(ctx.store, "vm", host=host or ctx.host_name())
    for row in rows:
        owner = owners.get(row["uuid"])
        row["owner"] = owner.owner if owner else None
        row["may_act"] = ownership.may_act_given(who, owner)


class VMRow(BaseModel):
    """One row of ``GET /api/v1/vms`` (documents the answer; the route serialises plain dicts)."""

    name: str
    uuid: str
    state: str = Field(examples=["running", "shut off"])
    state_reason: str | None = Field(
        default=None,
        description="why, when it is news: 'crashed' (QEMU died), 'guest panicked', "
        "'disk I/O error'; shown as 'shut off (crashed)'",
    )
    id: int | None
    vcpus: int | None
    memory: int | None = Field(description="bytes the guest has now (balloon)")
    max_memory: int | None
    cpu_time_ns: int | None
    autostart: bool
    persistent: bool
    ips: list[str] = Field(description="only with ?ips=true")
    addresses: list[dict[str, str]] = Field(
        description="only with ?ips=true: each address with its mac and source (lease, agent, arp)"
    )
    owner: str | None
    may_act: bool = Field(description="whether the caller may act on this VM")


@router.get(
    "",
    summary="Every VM with state, CPU time and memory (one bulk libvirt call)",
    response_model=list[VMRow],
)
def list_vms(
    who: Viewer,
    ctx: Ctx,
    ips: Annotated[bool, Query(description="discover addresses")] = False,
    all_hosts: Annotated[
        bool,
        Query(
            description="every registered host in parallel: rows gain 'host'; a host that does "
            "not answer in time is a row with state 'unreachable' and its 'error'"
        ),
    ] = False,
) -> Response:
    if all_hosts:
        rows = _fleet_rows(ctx, who, ips)
    else:
        rows = [vm.as_dict() for vm in vms_service.list_vms(ctx.conn(), with_ips=ips)]
        _with_owners(ctx, who, rows)
    # Serialised here: FastAPI's validation of a list[dict[str, Any]] answer against the model
    # and its encoder cost more than json.dumps of rows that are all str/int/bool/None/list[str].
    # Returning a Response skips them; response_model above keeps the OpenAPI schema.
    body = json.dumps(rows, separators=(",", ":")).encode()
    del rows  # at 5,000 VMs the rows are megabytes; drop them before the answer is sent
    release_after_big_answer(len(body))
    return Response(body, media_type="application/json")


def _fleet_rows(ctx: AppContext, who: Principal, ips: bool) -> list[dict[str, Any]]:
    ctx.own_host()  # the server's own daemon is a host too (registered on first use)
    rows, down = ctx.hosts.fleet_vms(with_ips=ips)
    by_host: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_host.setdefault(row["host"], []).append(row)
    for host, host_rows in by_host.items():
        _with_owners(ctx, who, host_rows, host)
    return rows + [{"host": d["host"], "state": "unreachable", "error": d["error"]} for d in down]


@router.get("/{name}", summary="One VM: definition facts, disks, NICs, consoles, addresses")
def vm_info(name: str, who: Viewer, ctx: Ctx) -> dict[str, Any]:
    info = vms_service.vm_info(ctx.conn(), name)
    _with_owners(ctx, who, [info])
    info["busy"] = ctx.busy(name)
    return info


@router.get("/{name}/resources", summary="vCPUs and memory, live and in the definition")
def vm_resources(name: str, _who: Viewer, ctx: Ctx) -> dict[str, Any]:
    return resources_service.resources(ctx.conn(), name).as_dict()


# ---------------------------------------------------------------------------------- create
@router.post("", status_code=202, summary="Create a VM (a task: poll /api/v1/tasks/{id})")
def create_vm(body: VMCreate, who: Operator, ctx: Ctx) -> dict[str, Any]:
    params = body.model_dump(exclude={"unattended", "cloud_init"})

    # Checked before the task is queued, so a bad request is a 422 (or 403) now, not a failed
    # task; the worker checks again when it runs (kvmgr.control.task_kinds).
    def check() -> dict[str, str]:
        spec = task_kinds.vm_spec(params)
        check_vm_spec(ctx.authz(ctx.conn(), who), spec)
        check_request(ctx.conn(), spec)  # a name in use is 409, a missing network/pool 404
        # Task parameters are stored: Linux passwords are hashed here, before anything keeps
        # them; a Windows target's go to the task's secrets.  Decided only after the checks
        # above, so that reading the ISO tells no one about a file they may not use.
        from kvmgr.services.provision import targets_windows

        if body.unattended is not None and targets_windows(ctx.conn(), spec.iso, spec.os):
            params["unattended"], secrets = windows_provision_params(body.unattended, body.name)
            params.update(hashed_provision_params(None, body.cloud_init))
            return secrets
        params.update(hashed_provision_params(body.unattended, body.cloud_init))
        return {}

    secrets = ctx.audited(who, "vm.create.request", body.name, check)
    return ctx.submit(who, "vm.create", params, body.name, secrets=secrets)


# ---------------------------------------------------------------------------------- actions
def _do_action(conn: Connection, name: str, action: Action, force: bool, timeout: float) -> str:
    if action == "shutdown":
        return vms_service.shutdown(conn, name, timeout=timeout, force=force)
    simple = {
        "start": vms_service.start,
        "reboot": vms_service.reboot,
        "reset": vms_service.reset,
        "off": vms_service.force_off,
        "pause": vms_service.pause,
        "resume": vms_service.resume,
    }
    simple[action](conn, name)
    return vms_service.state(conn, name)


@router.put("/{name}/autostart", summary="Start the VM with the host, or not")
def vm_autostart(name: str, body: Autostart, who: Operator, ctx: Ctx) -> dict[str, Any]:
    ctx.act(
        who,
        "vm.autostart",
        name,
        lambda conn: vms_service.set_autostart(conn, name, body.enabled),
        vm=name,
    )
    return {"name": name, "autostart": body.enabled}


@router.patch("/{name}/resources", summary="Change vCPUs and memory (live and/or definition)")
def vm_resize(name: str, body: Resize, who: Operator, ctx: Ctx) -> dict[str, Any]:
    memory = parse_size(body.memory, what="memory", default_unit="M") if body.memory else None

    def work(conn: Connection) -> dict[str, Any]:
        return resources_service.set_resources(
            conn, name, vcpus=body.vcpus, memory=memory, live=body.live, config=body.config
        ).as_dict()

    return ctx.act(who, "vm.resize", name, work, vm=name)


@router.post("/{name}/disks", status_code=201, summary="Attach a new or existing disk")
def vm_add_disk(name: str, body: DiskAdd, who: Operator, ctx: Ctx) -> dict[str, Any]:
    if (body.size is None) == (body.path is None):
        raise InvalidInput("give either size (a new volume) or path (an existing disk)")
    size = parse_size(body.size, what="disk size", default_unit="G") if body.size else None

    def work(conn: Connection) -> dict[str, Any]:
        authz = ctx.authz(conn, who)
        path, take = body.path, False
        if path is not None:
            resolved = authz.disk(path)
            path, take = resolved.path, resolved.record
        else:
            authz.pool(body.pool)
        with ctx.operation(who, "disk add", name, [ctx.vm_key(name)]) as steps:
            change = resources_service.add_disk(
                conn,
                name,
                size=size,
                path=path,
                pool=body.pool,
                fmt=body.format,
                bus=body.bus,
                steps=steps,
            )
        if change.path and (change.owned or take):
            ownership.record_owner(ctx.store, "volume", change.path, who, host=ctx.host_name())
        return asdict(change)

    return ctx.act(who, "vm.disk.add", name, work, vm=name)


@router.delete("/{name}/disks/{target}", summary="Detach a disk (and delete it if kvmgr made it)")
def vm_remove_disk(
    name: str,
    target: str,
    who: Operator,
    ctx: Ctx,
    delete_volume: bool = False,
) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        with ctx.operation(who, "disk remove", f"{name}/{target}", [ctx.vm_key(name)]) as steps:
            change = resources_service.remove_disk(
                conn, name, target, delete_volume=delete_volume, steps=steps
            )
        if change.volume_deleted and change.path:
            ownership.forget_owner(ctx.store, "volume", change.path, host=ctx.host_name())
        return asdict(change)

    return ctx.act(who, "vm.disk.remove", f"{name}/{target}", work, vm=name)


@router.patch("/{name}/disks/{target}", summary="Grow a disk (live when the VM runs)")
def vm_resize_disk(
    name: str, target: str, body: DiskResize, who: Operator, ctx: Ctx
) -> dict[str, Any]:
    size = parse_size(body.size, what="disk size", default_unit="G")

    def work(conn: Connection) -> dict[str, Any]:
        return asdict(resources_service.resize_disk(conn, name, target, size))

    return ctx.act(who, "vm.disk.resize", f"{name}/{target}", work, vm=name)


@router.post("/{name}/nics", status_code=201, summary="Add a NIC on a network or bridge")
def vm_add_nic(name: str, body: NicAdd, who: Operator, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        authz = ctx.authz(conn, who)
        if body.network is not None:
            authz.network(body.network)
        if body.bridge is not None:
            authz.bridge(body.bridge)
        # The network is used (its delete waits) from before add_nic checks it until plugged.
        uses = [net_key(ctx.host_name(), body.network)] if body.network is not None else []
        with ctx.plane_for(who).using(uses, f"NIC add {name}"):
            change = resources_service.add_nic(
                conn, name, network=body.network, bridge=body.bridge, model=body.model, mac=body.mac
            )
        return asdict(change)

    return ctx.act(who, "vm.nic.add", name, work, vm=name)


@router.delete("/{name}/nics/{mac}", summary="Remove the NIC with this MAC address")
def vm_remove_nic(name: str, mac: str, who: Operator, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        return asdict(resources_service.remove_nic(conn, name, mac))

    return ctx.act(who, "vm.nic.remove", f"{name}/{mac}", work, vm=name)


# ---------------------------------------------------------------------------------- delete
@router.delete("/{name}", summary="Delete a VM and the volumes kvmgr made for it")
def vm_delete(
    name: str,
    who: Operator,
    ctx: Ctx,
    force: bool = False,
    keep_disks: bool = False,
) -> dict[str, Any]:
    def work(conn: Connection) -> list[str]:
        uuid = ctx.vm_uuid(conn, name)
        with ctx.operation(who, "delete", name, [ctx.vm_key(name)]) as steps:
            removed = vms_service.delete(
                conn, name, force=force, keep_disks=keep_disks, steps=steps
            )
        ownership.forget_owner(ctx.store, "vm", uuid, host=ctx.host_name())
        for path in removed:
            ownership.forget_owner(ctx.store, "volume", path, host=ctx.host_name())
        return removed

    removed = ctx.act(who, "vm.delete", name, work, vm=name)
    return {"name": name, "deleted_volumes": removed}


# Registered last: "/{name}/{action}" would otherwise take POST /{name}/disks and /{name}/nics.
@router.post("/{name}/{action}", summary="Power action: start, shutdown, reboot, reset, off, …")
def vm_action(
    name: str,
    action: Action,
    who: Operator,
    ctx: Ctx,
    force: Annotated[bool, Query(description="shutdown: power off after the timeout")] = False,
    timeout: Annotated[float, Query(ge=0, le=600)] = 120.0,
    wait: Annotated[
        Literal["none", "ip", "ready"],
        Query(
            description="start: answer once an address is seen (ip) or the guest is ready "
            "(ready: console marker, guest agent or SSH banner), within timeout seconds"
        ),
    ] = "none",
) -> dict[str, str]:
    seen: list[str] = []

    def work(conn: Connection) -> str:
        if action != "start" or wait == "none":
            return _do_action(conn, name, action, force, timeout)
        from kvmgr.services.readiness import start_vm

        seen.append(str(start_vm(conn, name, wait, timeout)))
        return vms_service.state(conn, name)

    state = ctx.act(who, f"vm.{action}", name, work, vm=name)
    answer = {"name": name, "state": state}
    if seen:
        answer["ready"] = seen[0]  # "ip 192.168.122.5 from lease", "ready: ssh banner ..."
    return answer
