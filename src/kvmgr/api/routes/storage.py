"""Storage pools and volumes (changes: admins)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmgr.api.deps import Admin, Ctx, Viewer
from kvmgr.connect import Connection
from kvmgr.control import ownership
from kvmgr.names import validate_name
from kvmgr.services import storage as storage_service

router = APIRouter(prefix="/api/v1/pools", tags=["storage"])


class PoolCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    path: str = Field(min_length=1, max_length=4096)
    type: Literal["dir"] = "dir"
    group: str | None = Field(
        default=None, max_length=64, description="serve only this group's operators"
    )


class VolumeCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    size: str = Field(min_length=1, max_length=32, examples=["10G"])
    format: Literal["qcow2", "raw"] = "qcow2"


class VolumeResize(BaseModel):
    size: str = Field(min_length=1, max_length=32)
    shrink: bool = False


@router.get("", summary="Every storage pool with capacity and use")
def list_pools(_who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return [pool.as_dict() for pool in storage_service.list_pools(ctx.conn())]


@router.get("/{pool}", summary="One pool")
def pool_info(pool: str, _who: Viewer, ctx: Ctx) -> dict[str, Any]:
    return storage_service.pool_info(ctx.conn(), pool).as_dict()


@router.post("", status_code=201, summary="Create, build and start a directory pool")
def create_pool(body: PoolCreate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        if body.group is not None:
            validate_name(body.group, what="group name")
        path = ctx.authz(conn, who).pool_path(body.path)
        made = storage_service.create_pool(conn, body.name, path, body.type).as_dict()
        ownership.record_owner(
            ctx.store, "pool", body.name, who, group=body.group, host=ctx.host_name()
        )
        return made

    return ctx.act(who, "pool.create", body.name, work)


@router.post("/{pool}/refresh", summary="Rescan a pool's volumes")
def refresh_pool(pool: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    return ctx.act(
        who, "pool.refresh", pool, lambda conn: storage_service.refresh_pool(conn, pool).as_dict()
    )


@router.delete("/{pool}", summary="Delete a pool (refused while used; force deletes its volumes)")
def delete_pool(pool: str, who: Admin, ctx: Ctx, force: bool = False) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        deleted = asdict(storage_service.delete_pool(conn, pool, force=force))
        ownership.forget_owner(ctx.store, "pool", pool, host=ctx.host_name())
        return deleted

    return ctx.act(who, "pool.delete", pool, work)


@router.get("/{pool}/volumes", summary="Volumes of a pool and the VMs using each")
def list_volumes(pool: str, _who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return [vol.as_dict() for vol in storage_service.list_volumes(ctx.conn(), pool)]


@router.get("/{pool}/volumes/{name}", summary="One volume")
def volume_info(pool: str, name: str, _who: Viewer, ctx: Ctx) -> dict[str, Any]:
    return storage_service.volume_info(ctx.conn(), pool, name).as_dict()


@router.post("/{pool}/volumes", status_code=201, summary="Create a sparse volume")
def create_volume(pool: str, body: VolumeCreate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    return ctx.act(
        who,
        "vol.create",
        f"{pool}/{body.name}",
        lambda conn: storage_service.create_pool_volume(
            conn, pool, body.name, body.size, body.format
        ).as_dict(),
    )


@router.patch("/{pool}/volumes/{name}", summary="Resize a volume (shrinking only with shrink)")
def resize_volume(pool: str, name: str, body: VolumeResize, who: Admin, ctx: Ctx) -> dict[str, Any]:
    return ctx.act(
        who,
        "vol.resize",
        f"{pool}/{name}",
        lambda conn: storage_service.resize_volume(
            conn, pool, name, body.size, shrink=body.shrink
        ).as_dict(),
    )


@router.delete("/{pool}/volumes/{name}", summary="Delete a volume (refused while used)")
def delete_volume(pool: str, name: str, who: Admin, ctx: Ctx) -> dict[str, str]:
    ctx.act(
        who,
        "vol.delete",
        f"{pool}/{name}",
        lambda conn: storage_service.delete_pool_volume(conn, pool, name),
    )
    return {"status": "deleted", "pool": pool, "name": name}
