"""Issue 12: fleet inventory.  ``kvmgr vm list --all-hosts`` over 50 and 200 registered hosts
(test:/// driver files of 100 VMs each) against ``kvmgr --host H vm list`` of one such host
(target <=2x); and the time one dead host adds, against the per-host bound (target: no more).

The dead host is the worst kind: a port that accepts TCP and never answers (a hung or frozen
daemon), so only the bound ends the wait.  A refused port (daemon stopped) answers at once.

Each test:/// host is simulated in the listing process itself: opening one makes libvirt's test
driver parse its 100-domain file, CPU that a real host spends in its own daemon, once, at daemon
start.  The note gives that cost per host, measured, so the figure can be read for what it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

from bench.core import (
    BenchError,
    Context,
    Line,
    Result,
    Target,
    interleaved,
    median,
    run_command,
    timed_command,
)
from bench.driverfile import write_driver_file

FLEET_TARGET = Target("<=2x one host", max_ratio=2.0)
VMS_PER_HOST = 100
BOUND = 3.0  # KVMGR_HOST_TIMEOUT of the dead-host runs: their extra time is held to it
#: KVMGR_HOST_TIMEOUT of the plain runs: never reached, so every host's VMs are in the figure
#: (checked) even on a loaded machine
GENEROUS = 120.0


def sizes(ctx: Context) -> tuple[int, ...]:
    return (50, 200)


class SilentPort:
    """A loopback port that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = int(self.server.getsockname()[1])
        self._accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                self._accepted.append(self.server.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._accepted:
            conn.close()
        self.server.close()


def _fleet(ctx: Context, count: int) -> tuple[dict[str, str], list[str]]:
    """A database with ``count`` test:/// hosts registered; (environment, host URIs)."""
    from kvmgr.control.hosts import HostRegistry
    from kvmgr.store.db import Store

    folder = ctx.workdir / f"fleet-{count}"
    folder.mkdir(exist_ok=True)
    db = folder / "db" / "kvmgr.db"
    registry = HostRegistry(Store(f"sqlite:///{db}"))
    uris = []
    for index in range(count):
        uri = write_driver_file(folder / f"h{index:03d}.xml", VMS_PER_HOST)
        registry.add(f"h{index:03d}", uri, verify=False)  # the runs below are what touch them
        uris.append(uri)
    registry.store.dispose()
    env = {
        "KVMGR_DB_URL": f"sqlite:///{db}",
        "KVMGR_STATE_DIR": str(folder / "state"),
        "KVMGR_HOST_TIMEOUT": str(GENEROUS),
    }
    os.environ.pop("KVMGR_URI", None)
    return env, uris


def _check_complete(output: str, count: int) -> None:
    rows = json.loads(output)
    hosts = {row["host"] for row in rows if row.get("name")}
    if len(rows) != count * VMS_PER_HOST or len(hosts) != count:
        raise BenchError(f"the fleet listing has {len(rows)} rows from {len(hosts)} hosts")


def _open_cost(uris: list[str]) -> float:
    """Median CPU seconds libvirt's test driver takes to open (parse) one 100-VM host file.

    The test driver runs in the calling process and thread, so process time is its CPU.
    """
    import libvirt

    samples = []
    for uri in uris[:9]:
        began = time.process_time()
        libvirt.open(uri).close()
        samples.append(time.process_time() - began)
    return median(samples)


def run(ctx: Context) -> Iterator[Line]:
    reps = ctx.reps(3, 7)
    for count in sizes(ctx):
        ctx.say(f"fleet of {count} hosts x {VMS_PER_HOST} VMs")
        env, uris = _fleet(ctx, count)
        fleet = [ctx.kvmgr, "vm", "list", "--all-hosts", "--no-ips", "-o", "json"]
        one = [ctx.kvmgr, "--host", "h000", "vm", "list", "--no-ips", "-o", "json"]
        _check_complete(run_command(fleet, env=env), count)
        measured = interleaved(
            {"fleet": timed_command(fleet, env=env), "one": timed_command(one, env=env)}, reps
        )
        per_host = _open_cost(uris)
        yield Result(
            "fleet",
            f"vm list --all-hosts, {count} hosts",
            "s",
            "kvmgr vm list --all-hosts",
            measured["fleet"],
            "kvmgr --host h000 vm list",
            measured["one"],
            FLEET_TARGET,
            note=f"{count * VMS_PER_HOST} VMs; the test driver's open costs "
            f"{per_host * 1e3:.0f} ms CPU per host in the listing process "
            f"({count * per_host:.1f} s for all, on {os.cpu_count()} CPUs)",
        )
        if count == min(sizes(ctx)):
            yield from _dead_host(ctx, env, fleet, reps)


def _dead_host(ctx: Context, env: dict[str, str], fleet: list[str], reps: int) -> Iterator[Line]:
    """The same fleet with one host that never answers added: the extra time, against BOUND."""
    from kvmgr.control.hosts import HostRegistry
    from kvmgr.errors import NotFound
    from kvmgr.store.db import Store

    ctx.say(f"fleet with one hung host (bound {BOUND:g} s)")
    silent = SilentPort()
    registry = HostRegistry(Store(env["KVMGR_DB_URL"]))
    env = {**env, "KVMGR_HOST_TIMEOUT": str(BOUND)}
    try:
        without = interleaved({"fleet": timed_command(fleet, env=env)}, reps)["fleet"]
        registry.add(
            "hung",
            f"qemu+tcp://127.0.0.1:{silent.port}/system",
            insecure_transport=True,
            verify=False,
        )
        with_dead = interleaved({"fleet": timed_command(fleet, env=env)}, reps)["fleet"]
    finally:
        with contextlib.suppress(NotFound):
            registry.remove("hung", force=True)  # waits out the bound once: it cannot tell
        registry.store.dispose()
        silent.close()
    extra = [value - median(without) for value in with_dead]
    yield Result(
        "fleet",
        "one hung host: extra time",
        "s",
        "with - without",
        extra,
        target=Target(f"<= bound ({BOUND:g} s)", max_value=BOUND),
        note=f"without {median(without):.2f} s, with {median(with_dead):.2f} s",
    )
