"""Networks: list, details, create, start/stop, autostart, delete, DHCP leases (changes: admins)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmgr.api.deps import Admin, Ctx, Viewer
from kvmgr.connect import Connection
from kvmgr.control import ownership
from kvmgr.names import validate_name
from kvmgr.services import networks as net_service

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
    return net_service.network_info(ctx.conn(), name).as_dict()


@router.get("/{name}/leases", summary="DHCP leases of a running network")
def network_leases(name: str, _who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return [asdict(lease) for lease in net_service.leases(ctx.conn(), name)]


@router.post("", status_code=201, summary="Create a network (a free /24 is chosen if none given)")
def create_network(body: NetworkCreate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    spec = net_service.NetworkSpec(**body.model_dump(exclude={"group"}))

    def work(conn: Connection) -> dict[str, Any]:
        if body.group is not None:
            validate_name(body.group, what="group name")
        made = net_service.create_network(conn, spec).as_dict()
        ownership.record_owner(
            ctx.store, "network", body.name, who, group=body.group, host=ctx.host_name()
        )
        return made

    return ctx.act(who, "net.create", body.name, work)


@router.post("/{name}/start", summary="Start a network")
def start_network(name: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    return ctx.act(
        who, "net.start", name, lambda conn: net_service.start_network(conn, name).as_dict()
    )


@router.post("/{name}/stop", summary="Stop a network (refused while running VMs use it)")
def stop_network(name: str, who: Admin, ctx: Ctx, force: bool = False) -> dict[str, Any]:
    return ctx.act(
        who,
        "net.stop",
        name,
        lambda conn: net_service.stop_network(conn, name, force=force).as_dict(),
    )


@router.put("/{name}/autostart", summary="Start the network with the host, or not")
def network_autostart(name: str, body: Autostart, who: Admin, ctx: Ctx) -> dict[str, Any]:
    return ctx.act(
        who,
        "net.autostart",
        name,
        lambda conn: net_service.set_autostart(conn, name, body.enabled).as_dict(),
    )


@router.post("/{name}/reservations", status_code=201, summary="Reserve a DHCP address")
def reserve(name: str, body: ReservationCreate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        found = net_service.reserve(
            conn, name, body.ip, mac=body.mac, vm=body.vm, hostname=body.hostname
        )
        return asdict(found)

    return ctx.act(who, "net.reserve", f"{name}/{body.ip}", work)


@router.delete("/{name}/reservations/{ip}", summary="Remove the DHCP reservation of an address")
def unreserve(name: str, ip: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        return asdict(net_service.unreserve(conn, name, ip=ip))

    return ctx.act(who, "net.unreserve", f"{name}/{ip}", work)


@router.delete("/{name}", summary="Delete a network (refused while VMs use it)")
def delete_network(name: str, who: Admin, ctx: Ctx, force: bool = False) -> dict[str, str]:
    def work(conn: Connection) -> None:
        net_service.delete_network(conn, name, force=force)
        ownership.forget_owner(ctx.store, "network", name, host=ctx.host_name())

    ctx.act(who, "net.delete", name, work)
    return {"status": "deleted", "name": name}
