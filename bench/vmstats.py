"""Issue 8.2: stats of all VMs (``services.stats.collect``) against one ``getAllDomainStats``.

Same test:/// driver files as the inventory, same stats groups as kvmgr asks for, so the
difference is what kvmgr does with the records (typed counters per VM).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

from bench.core import Context, Line, Result, Skip, Target, interleaved, timed
from bench.counting import CallLog, CountingConnection
from bench.driverfile import write_driver_file
from bench.inventory import sizes

STATS_TARGET = Target("<=1.5x raw", max_ratio=1.5)


def run(ctx: Context) -> Iterator[Line]:
    if importlib.util.find_spec("kvmgr.services.stats") is None:
        yield Skip("stats", "not available yet: kvmgr.services.stats is missing")
        return
    from kvmgr.connect import Connection, open_connection
    from kvmgr.services import stats

    for count in sizes(ctx):
        uri = write_driver_file(ctx.workdir / f"stats-{count}.xml", count)
        conn = open_connection(uri)
        try:
            ctx.say(f"stats of all VMs at N={count}")
            measured = interleaved(
                {
                    "kvmgr": timed(lambda conn=conn: stats.collect(conn)),
                    "raw": timed(
                        lambda conn=conn: conn.virconn.getAllDomainStats(stats.STATS_GROUPS, 0)
                    ),
                },
                ctx.reps(9, 21),
            )
            log = CallLog()
            stats.collect(Connection(uri=uri, virconn=CountingConnection(conn.virconn, log)))
        finally:
            conn.close()
        yield Result(
            "stats",
            f"collect all N={count}",
            "s",
            "stats.collect",
            measured["kvmgr"],
            "one getAllDomainStats",
            measured["raw"],
            STATS_TARGET,
            note=f"libvirt calls: {log.remote_total} ({', '.join(sorted(log.remote))})",
        )
