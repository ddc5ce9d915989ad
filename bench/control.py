"""Issue 12: lock and journal overhead of the control plane, on SQLite and PostgreSQL.

``vm start`` and ``vm stop`` (power off) of a real guest (qemu:///system, TCG) as the library call
alone against the same call inside ``ControlPlane.operation`` (the VM's lease, the operation's
own lease, its row, one journal record committed before the act, marked done, leases released)
and inside ``ControlPlane.lease`` (what the CLI and API do for lifecycle).  In-process, so the
figure is the control plane's cost and nothing else (CLI start-up is its own bench).  The
PostgreSQL server is a throw-away cluster on a loopback port, made here when PostgreSQL 15 is
installed.  One more line gives the control plane's cost alone, without libvirt, in ms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
from tests.pgcluster import missing_reason, throwaway_postgres

from bench import cleanup, raw_provision
from bench.core import Context, Line, Result, Skip, Target, interleaved, timed
from bench.driverfile import NAME_PREFIX
from bench.provision import IMAGES

PREFIX = f"{NAME_PREFIX}ctl-"
#: The issue's <=1.1x, held to the median of the per-round ratios.
PAIRED_TARGET = Target("<=1.1x", max_value=1.1)


def run(ctx: Context) -> Iterator[Line]:
    from kvmgr.connect import open_connection
    from kvmgr.services import vms

    conn = open_connection(ctx.system_uri)
    name = f"{PREFIX}vm"
    try:
        _clean(conn.virconn)
        raw_provision.main(ctx.system_uri, name, f"{IMAGES}/{name}.qcow2", "qemu")
        stores = [("SQLite", f"sqlite:///{ctx.workdir / 'control.db'}")]
        with _postgres(ctx) as pg_url:
            if pg_url is None:
                yield Skip("control", "PostgreSQL 15 is not installed: SQLite lines only")
            else:
                stores.append(("PostgreSQL", pg_url))
            for label, url in stores:
                yield from _measure(ctx, conn, vms, name, label, url)
    finally:
        _clean(conn.virconn)
        conn.close()


def _measure(ctx: Context, conn: Any, vms: Any, name: str, label: str, url: str) -> Iterator[Line]:
    from kvmgr.control.plane import ControlPlane
    from kvmgr.services.steps import recovery_action
    from kvmgr.store.db import Store

    if "bench.noop" not in _registered():
        recovery_action("bench.noop")(lambda _conn, _args: None)
    store = Store(url)
    plane = ControlPlane(store, "bench", lambda _host: conn)
    key = plane.vm_key("local", name)

    def journaled(kind: str, act: Callable[[], None]) -> Callable[[], None]:
        def work() -> None:
            with plane.operation(kind, name, "local", keys=[key]) as steps:
                steps.undo_with("bench.noop", vm=name)
                act()

        return work

    def leased(kind: str, act: Callable[[], None]) -> Callable[[], None]:
        def work() -> None:
            with plane.lease(key, kind):
                act()

        return work

    def cycle(start_with: Callable[[], None], stop_with: Callable[[], None]) -> dict[str, float]:
        """Start then stop, each timed alone."""
        start_s = timed(start_with)()
        stop_s = timed(stop_with)()
        return {"start": start_s, "stop": stop_s}

    start = lambda: vms.start(conn, name)  # noqa: E731 - one-line actions
    stop = lambda: vms.force_off(conn, name)  # noqa: E731
    variants = {
        "bare": (start, stop),
        "journal": (journaled("start", start), journaled("stop", stop)),
        "lease": (leased("start", start), leased("stop", stop)),
    }
    figures: dict[str, dict[str, list[float]]] = {v: {"start": [], "stop": []} for v in variants}

    def measure(variant: str) -> Callable[[], float]:
        def one() -> float:
            got = cycle(*variants[variant])
            for action, seconds in got.items():
                figures[variant][action].append(seconds)
            return got["start"]

        return one

    ctx.say(f"vm start/stop bare, with lease, with lease+journal ({label})")
    interleaved({v: measure(v) for v in variants}, ctx.reps(5, 15), warmup=1)
    warm = 1  # interleaved's warm-up round is in figures too: drop it
    for action in ("start", "stop"):
        bare = figures["bare"][action][warm:]
        for variant, subject in (("journal", "lease + journal"), ("lease", "lease only")):
            controlled = figures[variant][action][warm:]
            yield Result(
                "control",
                f"vm {action}, {label}",
                "s",
                f"{subject} (ControlPlane)",
                controlled,
                f"vms.{'start' if action == 'start' else 'force_off'} alone",
                bare,
                note="median over median; see the paired line for the target",
            )
            # Each round runs every variant once, back to back: the ratio within a round is
            # free of the load waves of a shared machine that swamp medians (spreads ~50 %).
            yield Result(
                "control",
                f"vm {action}, {label}",
                "x",
                f"{subject} / bare, same round",
                [round(c / b, 4) for c, b in zip(controlled, bare, strict=True)],
                target=PAIRED_TARGET,
            )
    overhead = interleaved(
        {
            "op": timed(journaled("noop", lambda: None)),
            "lease": timed(leased("noop", lambda: None)),
        },
        ctx.reps(20, 50),
    )
    yield Result(
        "control",
        f"control plane alone, {label}",
        "s",
        "operation: 2 leases, row, 1 record, done",
        overhead["op"],
        note="absolute cost, no libvirt call",
    )
    yield Result(
        "control",
        f"control plane alone, {label}",
        "s",
        "lease: take and release (lifecycle commands)",
        overhead["lease"],
        note="absolute cost, no libvirt call",
    )
    store.dispose()


def _registered() -> set[str]:
    from kvmgr.services.steps import ACTIONS

    return set(ACTIONS)


@contextlib.contextmanager
def _postgres(ctx: Context) -> Iterator[str | None]:
    """A throw-away PostgreSQL cluster on a loopback port (None when not installed)."""
    if missing_reason() is not None:
        yield None
        return
    ctx.say("starting a throw-away PostgreSQL")
    with throwaway_postgres(prefix="t-bench-pg-") as url:
        yield url


def _clean(conn: libvirt.virConnect) -> None:
    cleanup.sweep(conn, PREFIX, disks_under=[IMAGES])
    cleanup.sweep_files(conn, IMAGES, PREFIX)
