"""Storage pools and volumes (changes: admins)."""

from __future__ import annotations

import posixpath
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmgr.api.context import AppContext
from kvmgr.api.deps import Admin, Ctx, Viewer
from kvmgr.connect import Connection
from kvmgr.control import ownership
from kvmgr.control.objects import check_group, pool_key, set_group, vol_key
from kvmgr.control.plane import Key
from kvmgr.services import storage as storage_service
from kvmgr.services import storage_pools
from kvmgr.store.users import Principal

router = APIRouter(prefix="/api/v1/pools", tags=["storage"])


class PoolCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    path: str = Field(min_length=1, max_length=4096)
    type: Literal["dir"] = "dir"
    group: str | None = Field(
        default=None, max_length=64, description="serve only this group's operators"
    )


class PoolChange(BaseModel):
    """What may change on an existing pool: its group (null: shared by every operator)."""

    group: str | None = Field(max_length=64, description="serve only this group's operators")


class VolumeCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    size: str = Field(min_length=1, max_length=32, examples=["10G"])
    format: Literal["qcow2", "raw"] = "qcow2"


class VolumeResize(BaseModel):
    size: str = Field(min_length=1, max_length=32)
    shrink: bool = False


@router.get("", summary="Every storage pool with capacity and use")
def list_pools(_who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return [pool.as_dict() for pool in storage_pools.list_pools(ctx.conn())]


@router.get("/{pool}", summary="One pool")
def pool_info(pool: str, _who: Viewer, ctx: Ctx) -> dict[str, Any]:
    data = storage_pools.pool_info(ctx.conn(), pool).as_dict()
    owner = ownership.owner_of(ctx.store, "pool", pool, host=ctx.host_name())
    data["group"] = owner.group if owner is not None else None
    data["busy"] = ctx.plane.busy(pool_key(ctx.host_name(), pool))
    return data


def _lease(
    ctx: AppContext, who: Principal, key: Key, operation: str
) -> AbstractContextManager[None]:
    """The object's lease: refused (409 Busy) while any kvmgr process works on it."""
    return ctx.plane_for(who).lease(key, operation)


@router.post("", status_code=201, summary="Create, build and start a directory pool")
def create_pool(body: PoolCreate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        check_group(body.group)
        path = ctx.authz(conn, who).pool_path(body.path)
        key = pool_key(ctx.host_name(), body.name)
        with ctx.operation(who, "pool create", body.name, [key]) as steps:
            made = storage_pools.create_pool(
                conn, body.name, path, body.type, steps=steps
            ).as_dict()
        ownership.record_owner(
            ctx.store, "pool", body.name, who, group=body.group, host=ctx.host_name()
        )
        return made

    return ctx.act(who, "pool.create", body.name, work)


@router.patch("/{pool}", summary="Change a pool's group (null: shared by every operator)")
def change_pool(pool: str, body: PoolChange, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        with _lease(ctx, who, pool_key(ctx.host_name(), pool), "set group"):
            storage_pools.pool_info(conn, pool)  # 404 for a pool that is not there
            set_group(ctx.store, "pool", pool, body.group, who, host=ctx.host_name())
        return {"name": pool, "group": body.group}

    return ctx.act(who, "pool.change", pool, work)


@router.post("/{pool}/refresh", summary="Rescan a pool's volumes")
def refresh_pool(pool: str, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        with _lease(ctx, who, pool_key(ctx.host_name(), pool), "refresh"):
            return storage_pools.refresh_pool(conn, pool).as_dict()

    return ctx.act(who, "pool.refresh", pool, work)


@router.delete("/{pool}", summary="Delete a pool (refused while used; force deletes its volumes)")
def delete_pool(pool: str, who: Admin, ctx: Ctx, force: bool = False) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        key = pool_key(ctx.host_name(), pool)
        with ctx.operation(who, "pool delete", pool, [key], sole=True) as steps:
            where = storage_pools.pool_info(conn, pool).path
            deletion = storage_pools.delete_pool(conn, pool, force=force, steps=steps)
        ownership.forget_owner(ctx.store, "pool", pool, host=ctx.host_name())
        for vol in deletion.deleted_volumes if where else []:
            path = posixpath.join(where or "", vol)  # a dir pool's volumes are its files
            ownership.forget_owner(ctx.store, "volume", path, host=ctx.host_name())
        return asdict(deletion)

    return ctx.act(who, "pool.delete", pool, work)


@router.get("/{pool}/volumes", summary="Volumes of a pool and the VMs using each")
def list_volumes(pool: str, _who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return [vol.as_dict() for vol in storage_service.list_volumes(ctx.conn(), pool)]


@router.get("/{pool}/volumes/{name}", summary="One volume")
def volume_info(pool: str, name: str, _who: Viewer, ctx: Ctx) -> dict[str, Any]:
    return storage_service.volume_info(ctx.conn(), pool, name).as_dict()


@router.post("/{pool}/volumes", status_code=201, summary="Create a sparse volume")
def create_volume(pool: str, body: VolumeCreate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        key = vol_key(ctx.host_name(), pool, body.name)
        with ctx.operation(who, "vol create", f"{pool}/{body.name}", [key]) as steps:
            made = storage_service.create_pool_volume(
                conn, pool, body.name, body.size, body.format, steps=steps
            )
        ownership.record_owner(
            ctx.store, "volume", made.path, who, label=f"{pool}/{body.name}", host=ctx.host_name()
        )
        return made.as_dict()

    return ctx.act(who, "vol.create", f"{pool}/{body.name}", work)


@router.patch("/{pool}/volumes/{name}", summary="Resize a volume (shrinking only with shrink)")
def resize_volume(pool: str, name: str, body: VolumeResize, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        with _lease(ctx, who, vol_key(ctx.host_name(), pool, name), "resize"):
            return storage_service.resize_volume(
                conn, pool, name, body.size, shrink=body.shrink
            ).as_dict()

    return ctx.act(who, "vol.resize", f"{pool}/{name}", work)


@router.delete("/{pool}/volumes/{name}", summary="Delete a volume (refused while used)")
def delete_volume(pool: str, name: str, who: Admin, ctx: Ctx) -> dict[str, str]:
    def work(conn: Connection) -> None:
        key = vol_key(ctx.host_name(), pool, name)
        with ctx.operation(who, "vol delete", f"{pool}/{name}", [key], sole=True) as steps:
            path = storage_service.volume_info(conn, pool, name).path
            storage_service.delete_pool_volume(conn, pool, name, steps)
        ownership.forget_owner(ctx.store, "volume", path, host=ctx.host_name())

    ctx.act(who, "vol.delete", f"{pool}/{name}", work)
    return {"status": "deleted", "pool": pool, "name": name}
