"""Networks: list, details, create, start/stop, autostart, delete, DHCP leases (changes: admins)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmgr.api.context import AppContext
from kvmgr.api.deps import Admin, Ctx, Viewer
from kvmgr.connect import Connection
from kvmgr.control import ownership
from kvmgr.control.objects import check_group, net_key, set_group
from kvmgr.services import networks as net_service
from kvmgr.store.users import Principal

router = APIRouter(prefix="/api/v1/networks", tags=["networks"])


class NetworkCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    mode: Literal["nat", "isolated", "routed", "bridge"] = "nat"
    subnet: str | None = Field(default=None, max_length=64)
    dhcp_range: str | None = Field(default=None, max_length=64)
    bridge: str | None = Field(default=None, max_length=15)
    domain: str | None = Field(default=None, max_length=253)
    autostart: bool = True
    group: str | None = Field(
        default=None, max_length=64, description="serve only this group's operators"
    )


class NetworkChange(BaseModel):
    """What may change on an existing network: its group (null: shared by every operator)."""

    group: str | None = Field(max_length=64, description="serve only this group's operators")


class Autostart(BaseModel):
    enabled: bool


class ReservationCreate(BaseModel):
    """A fixed DHCP address for a MAC, or for a VM's NIC on this network (exactly one)."""

    ip: str = Field(min_length=1, max_length=64)
    mac: str | None = Field(default=None, max_length=17)
    vm: str | None = Field(default=None, max_length=64)
    hostname: str | None = Field(default=None, max_length=63)


@router.get("", summary="Every network with subnet, DHCP range, bridge and VMs using it")
def list_networks(_who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return [net.as_dict() for net in net_service.list_networks(ctx.conn())]


@router.get("/{name}", summary="One network")
def network_info(name: str, _who: Viewer, ctx: Ctx) -> dict[str, Any]:
    data = net_service.network_info(ctx.conn(), name).as_dict()
    owner = ownership.owner_of(ctx.store, "network", name, host=ctx.host_name())
    data["group"] = owner.group if owner is not None else None
    data["busy"] = ctx.plane.busy(net_key(ctx.host_name(), name))
    return data


@router.get("/{name}/leases", summary="DHCP leases of a running network")
def network_leases(name: str, _who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return [asdict(lease) for lease in net_service.leases(ctx.conn(), name)]


@router.post("", status_code=201, summary="Create a network (a free /24 is chosen if none given)")
def create_network(body: NetworkCreate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    spec = net_service.NetworkSpec(**body.model_dump(exclude={"group"}))

    def work(conn: Connection) -> dict[str, Any]:
        check_group(body.group)
        key = net_key(ctx.host_name(), body.name)
        with ctx.operation(who, "net create", body.name, [key]) as steps:
            made = net_service.create_network(conn, spec, steps=steps).as_dict()
        ownership.record_owner(
            ctx.store, "network", body.name, who, group=body.group, host=ctx.host_name()
        )
        return made

    return ctx.act(who, "net.create", body.name, work)


@router.patch("/{name}", summary="Change a network's group (null: shared by every operator)")
def change_network(name: str, body: NetworkChange, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        with _lease(ctx, who, name, "set group"):
            net_service.network_info(conn, name)  # 404 for a network that is not there
            set_group(ctx.store, "network", name, body.group, who, host=ctx.host_name())
        return {"name": name, "group": body.group}

    return ctx.act(who, "net.change", name, work)


def _lease(
    ctx: AppContext, who: Principal, name: str, operation: str
) -> AbstractContextManager[None]:
    """Network ``name``'s lease: refused (409 Busy) while any kvmgr process works on it."""
    return ctx.plane_for(who).lease(net_key(ctx.host_name(), name), operation)


@router.post("/{name}/start", summary="Start a network")
def start_network(name: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        with _lease(ctx, who, name, "start"):
            return net_service.start_network(conn, name).as_dict()

    return ctx.act(who, "net.start", name, work)


@router.post("/{name}/stop", summary="Stop a network (refused while running VMs use it)")
def stop_network(name: str, who: Admin, ctx: Ctx, force: bool = False) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        with _lease(ctx, who, name, "stop"):
            return net_service.stop_network(conn, name, force=force).as_dict()

    return ctx.act(who, "net.stop", name, work)


@router.put("/{name}/autostart", summary="Start the network with the host, or not")
def network_autostart(name: str, body: Autostart, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        with _lease(ctx, who, name, "autostart"):
            return net_service.set_autostart(conn, name, body.enabled).as_dict()

    return ctx.act(who, "net.autostart", name, work)


@router.post("/{name}/reservations", status_code=201, summary="Reserve a DHCP address")
def reserve(name: str, body: ReservationCreate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        with _lease(ctx, who, name, f"reserve {body.ip}"):
            found = net_service.reserve(
                conn, name, body.ip, mac=body.mac, vm=body.vm, hostname=body.hostname
            )
        return asdict(found)

    return ctx.act(who, "net.reserve", f"{name}/{body.ip}", work)


@router.delete("/{name}/reservations/{ip}", summary="Remove the DHCP reservation of an address")
def unreserve(name: str, ip: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        with _lease(ctx, who, name, "unreserve"):
            return asdict(net_service.unreserve(conn, name, ip=ip))

    return ctx.act(who, "net.unreserve", f"{name}/{ip}", work)


@router.delete("/{name}", summary="Delete a network (refused while VMs use it)")
def delete_network(name: str, who: Admin, ctx: Ctx, force: bool = False) -> dict[str, str]:
    def work(conn: Connection) -> None:
        key = net_key(ctx.host_name(), name)
        with ctx.operation(who, "net delete", name, [key], sole=True) as steps:
            net_service.delete_network(conn, name, force=force, steps=steps)
        ownership.forget_owner(ctx.store, "network", name, host=ctx.host_name())

    ctx.act(who, "net.delete", name, work)
    return {"status": "deleted", "name": name}
