"""What the control plane adds to network and pool operations (issue 12 items 4-5 for objects).

``python -m bench.object_leases [URI] [ROUNDS]`` (default qemu:///system, 30 rounds) on a
throw-away SQLite file: each operation as the service call alone against the same call under the
object's lease (``ControlPlane.lease``: net start/stop, pool refresh) or inside a journaled
operation (``ControlPlane.operation``: net create, pool create, each undone by a plain delete).
Rounds interleave the two ways; medians in ms, and the ratio.  In-process: the figure is the
control plane's cost, not the CLI's start-up.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PREFIX = "bench-objl-"


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main(uri: str = "qemu:///system", rounds: int = 30) -> None:
    from kvmgr.connect import open_connection
    from kvmgr.control.objects import net_key, pool_key
    from kvmgr.control.plane import ControlPlane
    from kvmgr.services import networks, storage_pools
    from kvmgr.store.db import Store

    conn = open_connection(uri)
    work = Path(tempfile.mkdtemp(prefix=PREFIX))
    store = Store(f"sqlite:///{work / 'bench.db'}")
    plane = ControlPlane(store, "bench", lambda _host: conn)
    host = "bench"
    net, pool = f"{PREFIX}net", f"{PREFIX}pool"
    spec = networks.NetworkSpec(name=net, mode="isolated", subnet="10.219.3.0/24")

    def net_create_plain() -> None:
        networks.create_network(conn, spec)

    def net_create_journaled() -> None:
        with plane.operation("net create", net, host, [net_key(host, net)]) as steps:
            networks.create_network(conn, spec, steps=steps)

    def pool_create_plain() -> None:
        storage_pools.create_pool(conn, pool, str(work / "pool"))

    def pool_create_journaled() -> None:
        with plane.operation("pool create", pool, host, [pool_key(host, pool)]) as steps:
            storage_pools.create_pool(conn, pool, str(work / "pool"), steps=steps)

    def drop_net() -> None:
        networks.delete_network(conn, net, force=True)

    def drop_pool() -> None:
        storage_pools.delete_pool(conn, pool, force=True)

    def net_cycle_plain() -> None:
        networks.stop_network(conn, net, force=True)
        networks.start_network(conn, net)

    def net_cycle_leased() -> None:
        with plane.lease(net_key(host, net), "stop"):
            networks.stop_network(conn, net, force=True)
        with plane.lease(net_key(host, net), "start"):
            networks.start_network(conn, net)

    def refresh_plain() -> None:
        storage_pools.refresh_pool(conn, pool)

    def refresh_leased() -> None:
        with plane.lease(pool_key(host, pool), "refresh"):
            storage_pools.refresh_pool(conn, pool)

    def lease_alone() -> None:
        with plane.lease(pool_key(host, pool), "refresh"):
            pass

    cases: list[tuple[str, Callable[[], None], Callable[[], None], Callable[[], None] | None]] = [
        ("net create (journaled)", net_create_plain, net_create_journaled, drop_net),
        ("pool create (journaled)", pool_create_plain, pool_create_journaled, drop_pool),
    ]
    try:
        for label, plain, controlled, undo in cases:
            _report(label, plain, controlled, undo, rounds)
        networks.create_network(conn, spec)
        storage_pools.create_pool(conn, pool, str(work / "pool"))
        _report("net stop+start (2 leases)", net_cycle_plain, net_cycle_leased, None, rounds)
        _report("pool refresh (lease)", refresh_plain, refresh_leased, None, rounds)
        samples = []
        for _ in range(rounds):
            began = time.perf_counter()
            lease_alone()
            samples.append(time.perf_counter() - began)
        print(f"{'lease alone (take+release)':28} {_median_ms(samples):8.2f} ms")
    finally:
        for drop in (drop_net, drop_pool):
            with contextlib.suppress(Exception):  # already gone
                drop()
        store.dispose()
        conn.close()


def _report(
    label: str,
    plain: Callable[[], None],
    controlled: Callable[[], None],
    undo: Callable[[], None] | None,
    rounds: int,
) -> None:
    alone: list[float] = []
    under: list[float] = []
    for _ in range(rounds):
        for run, samples in ((plain, alone), (controlled, under)):
            began = time.perf_counter()
            run()
            samples.append(time.perf_counter() - began)
            if undo is not None:
                undo()
    a, u = _median_ms(alone), _median_ms(under)
    print(f"{label:28} plain {a:8.2f} ms  controlled {u:8.2f} ms  +{u - a:6.2f} ms  {u / a:5.2f}x")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["qemu:///system"]), *(int(n) for n in sys.argv[2:3]))
