"""Issue 8.1: inventory at 100, 1,000 and 5,000 domains on a test:/// driver file.

* kvmgr's library call (``services.vms.list_vms``) against raw libvirt-python in the same
  process (``listAllDomains`` + ``getAllDomainStats`` with the same stats groups);
* the libvirt calls each makes, counted through a proxy around the ``virConnect``;
* ``kvmgr vm list -o json`` against ``virsh list --all`` on the same URI;
* ``GET /api/v1/vms`` with a warm server (see :mod:`bench.api`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import libvirt

from bench.core import Context, Line, Result, Target, interleaved, timed, timed_command
from bench.counting import CallLog, CountingConnection
from bench.driverfile import write_driver_file

LIBRARY_TARGET = Target("<=1.5x raw", max_ratio=1.5)
CLI_TARGET = Target("<=1.2x virsh", max_ratio=1.2)
SAME_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
)


def sizes(ctx: Context) -> tuple[int, ...]:
    return (100, 1000, 5000)


def raw_inventory(virconn: Any) -> list[dict[str, Any]]:
    """What a hand-written script does: the autostart set, one bulk stats call, a row each."""
    autostart = {
        dom.UUIDString()
        for dom in virconn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)
    }
    rows = []
    for dom, stats in virconn.getAllDomainStats(SAME_STATS, 0):
        rows.append(
            {
                "name": dom.name(),
                "uuid": dom.UUIDString(),
                "state": stats.get("state.state"),
                "vcpus": stats.get("vcpu.current"),
                "memory": stats.get("balloon.current"),
                "cpu_time_ns": stats.get("cpu.time"),
                "autostart": dom.UUIDString() in autostart,
            }
        )
    return rows


def run(ctx: Context) -> Iterator[Line]:
    from kvmgr.connect import open_connection
    from kvmgr.services import vms

    calls_by_size: dict[int, int] = {}
    for count in sizes(ctx):
        uri = write_driver_file(ctx.workdir / f"inventory-{count}.xml", count)
        conn = open_connection(uri)
        try:
            ctx.say(f"library inventory at N={count}")
            measured = interleaved(
                {
                    "kvmgr": timed(lambda conn=conn: vms.list_vms(conn)),
                    "raw": timed(lambda conn=conn: raw_inventory(conn.virconn)),
                },
                ctx.reps(9, 21),
            )
            yield Result(
                "inventory",
                f"library list_vms N={count}",
                "s",
                "list_vms",
                measured["kvmgr"],
                "raw libvirt-python",
                measured["raw"],
                LIBRARY_TARGET,
            )
            yield from _call_counts(conn, count, calls_by_size)
        finally:
            conn.close()
        yield _cli_line(ctx, uri, count)
    smallest, largest = min(calls_by_size), max(calls_by_size)
    growth = calls_by_size[largest] - calls_by_size[smallest]
    yield Result(
        "inventory",
        f"libvirt calls growth N={smallest}->{largest}",
        "calls",
        "list_vms",
        [float(growth)],
        target=Target("0 (constant)", max_value=0),
    )


def _call_counts(conn: Any, count: int, calls_by_size: dict[int, int]) -> Iterator[Line]:
    from kvmgr.connect import Connection
    from kvmgr.services import vms

    for with_ips, label in ((False, "list_vms"), (True, "list_vms(with_ips) = CLI")):
        log = CallLog()
        counted = Connection(uri=conn.uri, virconn=CountingConnection(conn.virconn, log))
        vms.list_vms(counted, with_ips=with_ips)
        raw_log = CallLog()
        raw_inventory(CountingConnection(conn.virconn, raw_log))
        if not with_ips:
            calls_by_size[count] = log.remote_total
        detail = ", ".join(f"{name}={n}" for name, n in sorted(log.remote.items()))
        yield Result(
            "inventory",
            f"libvirt calls {label} N={count}",
            "calls",
            "kvmgr",
            [float(log.remote_total)],
            "raw",
            [float(raw_log.remote_total)],
            note=detail,
        )


def _cli_line(ctx: Context, uri: str, count: int) -> Line:
    ctx.say(f"CLI inventory at N={count}")
    measured = interleaved(
        {
            "kvmgr": timed_command([ctx.kvmgr, "-c", uri, "vm", "list", "-o", "json"]),
            "virsh": timed_command(["virsh", "-c", uri, "list", "--all"]),
        },
        ctx.reps(5, 11),
    )
    return Result(
        "inventory",
        f"CLI vm list N={count}",
        "s",
        "kvmgr vm list -o json",
        measured["kvmgr"],
        "virsh list --all",
        measured["virsh"],
        CLI_TARGET,
    )
