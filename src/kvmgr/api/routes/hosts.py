"""The hosts kvmgr manages (kvmgr.control.hosts): list, info, add, change, remove.

Reading is for every user; registering, changing and forgetting hosts is for admins.  Every other
route acts on one of these hosts when given ``?host=NAME`` (kvmgr.api.deps.request_host).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from kvmgr.api.deps import Admin, Ctx, Viewer

router = APIRouter(prefix="/api/v1/hosts", tags=["hosts"])


class HostAdd(BaseModel):
    """Like ``kvmgr host add``: the daemon must answer and be a machine not registered yet."""

    name: str = Field(min_length=1, max_length=64, examples=["node1"])
    uri: str = Field(min_length=1, max_length=512, examples=["qemu+ssh://root@10.0.0.5/system"])
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    insecure_transport: bool = Field(
        default=False, description="allow qemu+tcp:// (no encryption, no authentication)"
    )


class HostChange(BaseModel):
    """Like ``kvmgr host set``: only the fields given change (labels are replaced as a whole)."""

    labels: dict[str, str] | None = Field(default=None, max_length=32)
    maintenance: bool | None = None
    default: bool | None = Field(default=None, description="the host CLI commands default to")


def _labels(labels: dict[str, str]) -> dict[str, str]:
    """The same rule as the CLI's k=v text (one parser)."""
    from kvmgr.control.hosts import parse_labels

    return parse_labels(",".join(f"{key}={value}" for key, value in labels.items()))


@router.get("", summary="Every host: up or down, versions, domain type, CPUs, memory, VMs")
def list_hosts(_who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    registry = ctx.hosts
    ctx.own_host()  # the server's own daemon is a host too (registered on first use)
    return registry.statuses(registry.all())


@router.get("/{name}", summary="One host: its record and what libvirt reports of it")
def host_info(name: str, _who: Viewer, ctx: Ctx) -> dict[str, Any]:
    from kvmgr.host.info import host_info as facts

    registry = ctx.hosts
    record = registry.get(name)
    data: dict[str, Any] = {**record.as_dict(), "reachable": True}
    data.update(facts(registry.connect(name)))
    registry.seen([name])
    return data


@router.post("", status_code=201, summary="Register a host (admin)")
def add_host(body: HostAdd, who: Admin, ctx: Ctx) -> dict[str, Any]:
    labels = _labels(body.labels)
    record = ctx.audited(
        who,
        "host.add",
        body.name,
        lambda: ctx.hosts.add(
            body.name, body.uri, labels=labels, insecure_transport=body.insecure_transport
        ),
    )
    return record.as_dict()


@router.patch("/{name}", summary="Change labels, maintenance, default (admin)")
def change_host(name: str, body: HostChange, who: Admin, ctx: Ctx) -> dict[str, Any]:
    labels = None if body.labels is None else _labels(body.labels)
    record = ctx.audited(
        who,
        "host.set",
        name,
        lambda: ctx.hosts.set(
            name, labels=labels, maintenance=body.maintenance, default=body.default
        ),
    )
    return record.as_dict()


@router.delete("/{name}", summary="Forget a host; its VMs are left alone (admin)")
def remove_host(
    name: str,
    who: Admin,
    ctx: Ctx,
    force: Annotated[
        bool, Query(description="forget it even while VMs kvmgr made live there")
    ] = False,
) -> dict[str, Any]:
    forgotten = ctx.audited(who, "host.remove", name, lambda: ctx.hosts.remove(name, force=force))
    return {"removed": name, "vms_forgotten": forgotten}
