"""``/metrics`` in the Prometheus text format: host and per-VM CPU, memory, disk, network, state.

Per-VM numbers come from one bulk ``getAllDomainStats`` call, however many VMs there are.
Readable by any logged-in user, or by a scraper with the bearer token ``KVMGR_METRICS_TOKEN``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import libvirt
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from kvmgr.api.context import AppContext, Unauthorized
from kvmgr.api.deps import Ctx, current_user, get_ctx
from kvmgr.connect import Connection
from kvmgr.errors import libvirt_errors
from kvmgr.host.memory import node_memory

router = APIRouter(tags=["metrics"])

_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)
# (metric, help, type, stats key or None for per-device keys)
_VM_METRICS = [
    (
        "kvmgr_vm_state",
        "libvirt state number (1 running, 3 paused, 5 shut off)",
        "gauge",
        "state.state",
    ),
    ("kvmgr_vm_cpu_seconds_total", "CPU time used by the VM", "counter", "cpu.time"),
    ("kvmgr_vm_vcpus", "vCPUs online", "gauge", "vcpu.current"),
    ("kvmgr_vm_memory_bytes", "memory the guest has (balloon)", "gauge", "balloon.current"),
    ("kvmgr_vm_memory_max_bytes", "maximum memory", "gauge", "balloon.maximum"),
    ("kvmgr_vm_memory_rss_bytes", "host memory used by the VM", "gauge", "balloon.rss"),
]
_DEVICE_METRICS = [
    ("net", "rx.bytes", "kvmgr_vm_network_receive_bytes_total", "bytes received by the NIC"),
    ("net", "tx.bytes", "kvmgr_vm_network_transmit_bytes_total", "bytes sent by the NIC"),
    ("block", "rd.bytes", "kvmgr_vm_disk_read_bytes_total", "bytes read from the disk"),
    ("block", "wr.bytes", "kvmgr_vm_disk_write_bytes_total", "bytes written to the disk"),
]
_SCALE = {"cpu.time": 1e-9, "balloon.current": 1024, "balloon.maximum": 1024, "balloon.rss": 1024}


def label(value: str) -> str:
    """A label value escaped as the exposition format requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(conn: Connection) -> str:
    with libvirt_errors("reading host and VM statistics"):
        _model, _node_mib, cpus, *_rest = conn.virconn.getInfo()
        cpu = conn.virconn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS, 0)
        records = conn.virconn.getAllDomainStats(_STATS, 0)
    memory = node_memory(conn)
    lines = [
        "# HELP kvmgr_host_cpus CPUs of the host",
        "# TYPE kvmgr_host_cpus gauge",
        f"kvmgr_host_cpus {cpus}",
        "# HELP kvmgr_host_memory_bytes memory of the host",
        "# TYPE kvmgr_host_memory_bytes gauge",
        f"kvmgr_host_memory_bytes {memory.total}",
        "# HELP kvmgr_host_memory_free_bytes free memory of the host",
        "# TYPE kvmgr_host_memory_free_bytes gauge",
        f"kvmgr_host_memory_free_bytes {memory.free}",
        "# HELP kvmgr_host_memory_available_bytes free plus page cache: what new VMs can have",
        "# TYPE kvmgr_host_memory_available_bytes gauge",
        f"kvmgr_host_memory_available_bytes {memory.available}",
        "# HELP kvmgr_host_cpu_seconds_total host CPU time by mode",
        "# TYPE kvmgr_host_cpu_seconds_total counter",
    ]
    lines += [
        f'kvmgr_host_cpu_seconds_total{{mode="{label(mode)}"}} {value / 1e9:.3f}'
        for mode, value in sorted(cpu.items())
    ]
    named = [(dom.name(), stats) for dom, stats in records]
    lines += list(_vm_lines(named))
    return "\n".join(lines) + "\n"


def _vm_lines(records: list[tuple[str, dict[str, Any]]]) -> Iterator[str]:
    for metric, help_text, kind, key in _VM_METRICS:
        yield f"# HELP {metric} {help_text}"
        yield f"# TYPE {metric} {kind}"
        for name, stats in records:
            if key in stats:
                value = stats[key] * _SCALE.get(key, 1)
                yield f'{metric}{{vm="{label(name)}"}} {_number(value)}'
    for prefix, field, metric, help_text in _DEVICE_METRICS:
        yield f"# HELP {metric} {help_text}"
        yield f"# TYPE {metric} counter"
        for name, stats in records:
            for index in range(int(stats.get(f"{prefix}.count", 0))):
                device = str(stats.get(f"{prefix}.{index}.name", index))
                value = stats.get(f"{prefix}.{index}.{field}")
                if value is not None:
                    yield (
                        f'{metric}{{vm="{label(name)}",device="{label(device)}"}} {_number(value)}'
                    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}"


def _authorize(request: Request, ctx: AppContext) -> None:
    expected = ctx.settings.metrics_token
    header = request.headers.get("authorization", "")
    if expected and secrets.compare_digest(header, f"Bearer {expected}"):
        return
    try:
        current_user(request, ctx)
    except Unauthorized:
        raise Unauthorized(
            "metrics need a logged-in user or the metrics token",
            hint="send 'Authorization: Bearer $KVMGR_METRICS_TOKEN'",
        ) from None


@router.get(
    "/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (host and VMs)"
)
def metrics(request: Request, ctx: Ctx) -> PlainTextResponse:
    _authorize(request, ctx)
    from kvmgr.control import backup_schedules  # the schedules' runs
    from kvmgr.control.backups import metric_lines  # the backup catalog's lines

    lines = metric_lines(ctx.store) + backup_schedules.metric_lines(ctx.store)
    text = render(ctx.conn()) + "\n".join(lines) + "\n"
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


__all__ = ["get_ctx", "router"]
