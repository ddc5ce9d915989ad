"""The ISO library: list with detected OS and recommended resources, import (a task), delete."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmgr.api.deps import Admin, Ctx, Viewer
from kvmgr.connect import Connection
from kvmgr.control import ownership
from kvmgr.control.objects import iso_key
from kvmgr.errors import KvmgrError
from kvmgr.names import validate_name
from kvmgr.services import isos as iso_service

router = APIRouter(prefix="/api/v1/isos", tags=["isos"])


class IsoImport(BaseModel):
    path: str = Field(min_length=1, max_length=4096, description="path on the kvmgr host")
    name: str | None = Field(default=None, max_length=64)


def _check_name(name: str | None) -> None:
    if name is not None:
        validate_name(name, what="ISO name")


def install_script_kind(os_id: str) -> str | None:
    """kickstart/preseed when osinfo-db has an install script for the OS, autounattend for a
    Windows it has an answer-file template for (the wizard then offers an unattended install,
    with a product key for Windows), else None."""
    from kvmgr.osinfo.db import get_db
    from kvmgr.osinfo.install_scripts import scripts_for

    entry = get_db().get(os_id)
    if entry is None:
        return None
    scripts = scripts_for(entry)
    if entry.family == "winnt":
        return "autounattend" if any("/windows/unattend/" in s.id for s in scripts) else None
    kinds = {script.kind for script in scripts} & {"kickstart", "preseed"}
    return sorted(kinds)[0] if kinds else None


def _recommended(os_id: str) -> dict[str, Any]:
    """What the create wizard pre-fills for this OS (osinfo-db's recommendations)."""
    from kvmgr.osinfo.profiles import generic_profile, get_profile

    try:
        profile = generic_profile() if os_id == "generic" else get_profile(os_id)
    except KvmgrError:
        profile = generic_profile()
    return {
        "memory": profile.recommended_memory,
        "vcpus": profile.recommended_vcpus,
        "disk": profile.recommended_disk,
    }


@router.get("", summary="Imported ISOs with the detected OS and its recommended resources")
def list_isos(_who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return [
        {
            **asdict(iso),
            "recommended": _recommended(iso.os_id),
            "install_script": install_script_kind(iso.os_id),
        }
        for iso in iso_service.list_isos(ctx.conn())
    ]


@router.post("", status_code=202, summary="Import an ISO file from the host (a task)")
def import_iso(body: IsoImport, who: Admin, ctx: Ctx) -> dict[str, Any]:
    label = body.name or body.path

    def check() -> str:
        # Checked now, so a bad name or path is a 422 or 403 at once, not a failed task later.
        _check_name(body.name)
        return ctx.authz(ctx.conn(), who).import_source(body.path)

    ctx.audited(who, "iso.import.request", label, check)
    return ctx.submit(who, "iso.import", body.model_dump(), label)


@router.delete("/{name}", summary="Delete an imported ISO (refused while a VM uses it)")
def delete_iso(name: str, who: Admin, ctx: Ctx) -> dict[str, str]:
    def work(conn: Connection) -> None:
        key = iso_key(ctx.host_name(), name)
        with ctx.operation(who, "iso delete", name, [key], sole=True) as steps:
            iso_service.delete_iso(conn, name, steps=steps)
        ownership.forget_owner(ctx.store, "iso", name, host=ctx.host_name())

    ctx.act(who, "iso.delete", name, work)
    return {"status": "deleted", "name": name}
