"""Host facts and checks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kvmgr.api.deps import Ctx, Viewer
from kvmgr.connect import Connection
from kvmgr.connect.connection import libvirt_version
from kvmgr.errors import libvirt_errors
from kvmgr.host.memory import node_memory

router = APIRouter(prefix="/api/v1/host", tags=["host"])


def host_info(conn: Connection) -> dict[str, Any]:
    with libvirt_errors("reading the host's facts"):
        model, _node_mib, cpus, mhz, *_rest = conn.virconn.getInfo()
        hostname = conn.virconn.getHostname()
    memory = node_memory(conn)
    choice = conn.domain_type()
    return {
        "hostname": hostname,
        "uri": conn.uri,
        "arch": model,
        "cpus": cpus,
        "mhz": mhz,
        "memory": memory.total,
        "free_memory": memory.free,
        "available_memory": memory.available,
        "libvirt": libvirt_version(conn),
        "domain_type": choice.domain_type,
        "domain_type_reason": choice.reason,
    }


@router.get("/info", summary="Host capacity and libvirt facts")
def info(_who: Viewer, ctx: Ctx) -> dict[str, Any]:
    return host_info(ctx.conn())


@router.get("/check", summary="Can this host run VMs (the 'kvmgr host check' rows)")
def check(_who: Viewer, ctx: Ctx) -> dict[str, Any]:
    from kvmgr.host.check_runner import CheckContext
    from kvmgr.host.checks import run_checks

    report = run_checks(CheckContext(connect=ctx.conn))
    return {
        "can_run_vms": report.can_run_vms,
        "summary": report.summary,
        "seconds": report.seconds,
        "results": [
            {"check": r.name, "status": r.status.value, "detail": r.detail, "hint": r.hint}
            for r in report.results
        ],
    }
