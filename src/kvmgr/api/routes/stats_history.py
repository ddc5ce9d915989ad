"""The last hour of a VM's and of the host's CPU, memory, disk and network, for the web UI's
charts: what this replica's sampler kept (kvmgr.api.stats_history; each API replica keeps its
own, see docs/ARCHITECTURE.md).  Read like the VM (``GET /api/v1/vms/{name}``) and the host
(``GET /api/v1/host/info``) are, with ``?host=`` like every route.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from kvmgr.api.context import REQUEST_HOST, AppContext
from kvmgr.api.deps import Ctx, Viewer
from kvmgr.api.stats_history import HOST_SERIES, METRICS
from kvmgr.errors import libvirt_errors
from kvmgr.services import vms as vms_service

router = APIRouter(prefix="/api/v1", tags=["stats"])

UNITS = {
    "running": "1 running, 0 not",
    "cpu_percent": "percent",
    "memory_used": "bytes",
    "memory_total": "bytes",
    "disk_read_bps": "bytes/s",
    "disk_write_bps": "bytes/s",
    "net_rx_bps": "bytes/s",
    "net_tx_bps": "bytes/s",
}


def _answer(ctx: AppContext, series: str, **extra: Any) -> dict[str, Any]:
    host = ctx.host_name()
    if REQUEST_HOST.get() is not None:
        ctx.hosts.get(host)  # an unregistered ?host= is a 404, as on every route
    history = ctx.history.get(host)
    limits = ctx.history.limits
    data = history.series(series, time.time()) if history else None
    return {
        "host": host,
        **extra,
        # False when this replica takes no samples of the host (only its own is sampled, and
        # none with KVMGR_STATS_INTERVAL=0): the series are then empty.
        "sampled": history is not None and ctx.settings.stats_interval > 0,
        "interval": ctx.settings.stats_interval,
        "window": limits.window,
        "bucket": limits.bucket,
        "fine_seconds": limits.fine_seconds,
        "units": UNITS,
        "points": len(data["t"]) if data else 0,
        "series": data or {"t": [], **{metric: [] for metric in METRICS}},
    }


@router.get(
    "/vms/{name}/stats/history",
    summary="The VM's CPU, memory, disk and network over the last hour (oldest first)",
)
def vm_history(name: str, _who: Viewer, ctx: Ctx) -> dict[str, Any]:
    with libvirt_errors(f"reading VM {name}"):
        vms_service.lookup(ctx.conn(), name)  # a VM that is not there is a 404, as elsewhere
    return _answer(ctx, name, name=name)


@router.get(
    "/host/stats/history",
    summary="The host's CPU and memory, and its VMs' disk and network, over the last hour",
)
def host_history(_who: Viewer, ctx: Ctx) -> dict[str, Any]:
    return _answer(ctx, HOST_SERIES)
