"""Leases between real processes on one SQLite file and on a throw-away PostgreSQL server:
they serialise, a holder killed with SIGKILL is taken over at once, a remote holder's lease falls
free at expiry, and renewal keeps a long holder alive past its ttl."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from kvmgr.control.leases import Leases, holder_id
from kvmgr.control.models import Lease
from kvmgr.errors import Busy
from kvmgr.store.db import Store
from kvmgr.store.models import utcnow
from tests.api.test_postgres import pg_url

__all__ = ["pg_url"]  # the PostgreSQL fixture, used by the parametrised `url`
KEY = "vm:local/0000-lease-test"
FORK = multiprocessing.get_context("fork")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kvmgr.db'}"
        return
    base: str = request.getfixturevalue("pg_url")
    store = Store(base)
    with store.session() as session:
        session.query(Lease).delete()
    store.dispose()
    yield base


def _worker(url: str, log: str, rounds: int, name: str) -> None:
    """Take the lease ``rounds`` times (waiting), noting entry and exit around a short work."""
    store = Store(url)
    leases = Leases(store, ttl=5)
    for _ in range(rounds):
        with leases.hold(KEY, f"round of {name}", actor=name, wait=True, timeout=60):
            with open(log, "a") as out:
                out.write(f"in {name}\n")
            time.sleep(0.005)
            with open(log, "a") as out:
                out.write(f"out {name}\n")
    store.dispose()


def test_two_processes_serialise(url: str, tmp_path: Path) -> None:
    Store(url).dispose()  # migrate once, before the race
    log = tmp_path / "log"
    rounds = 15
    workers = [
        FORK.Process(target=_worker, args=(url, str(log), rounds, name)) for name in ("a", "b")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 4 * rounds
    # Never two inside at once: every "in" is followed by the same worker's "out".
    for entry, leave in zip(lines[::2], lines[1::2], strict=True):
        assert entry.startswith("in ") and leave == "out " + entry[3:], lines
    assert {line[-1] for line in lines} == {"a", "b"}


def _hold(url: str, ttl: float, ready: object, seconds: float) -> None:
    store = Store(url)
    with Leases(store, ttl=ttl).hold(KEY, "snapshot create nightly", actor="cli:other"):
        ready.set()  # type: ignore[attr-defined]
        time.sleep(seconds)


def test_holder_killed_by_sigkill_is_taken_over_at_once(url: str) -> None:
    ready = FORK.Event()
    holder = FORK.Process(target=_hold, args=(url, 600, ready, 600))
    holder.start()
    store = Store(url)  # after the fork: the child must not share this engine's connections
    try:
        assert ready.wait(30)
        leases = Leases(store)
        refused = "VM web1 is busy: snapshot create nightly by cli:other since"
        with (
            pytest.raises(Busy, match=refused),
            leases.hold(KEY, "start", actor="cli:me", what="VM web1"),
        ):
            pass
        assert leases.busy(KEY) is not None
        os.kill(holder.pid or 0, signal.SIGKILL)
        holder.join(10)
        # ttl 600 s, yet no wait: the holder was a process of this machine and is gone.
        began = time.monotonic()
        with leases.hold(KEY, "start", actor="cli:me"):
            assert leases.current(KEY).holder == holder_id()  # type: ignore[union-attr]
        assert time.monotonic() - began < 5
    finally:
        if holder.is_alive():
            holder.kill()
        store.dispose()


def test_a_remote_holders_lease_falls_free_at_expiry(url: str) -> None:
    store = Store(url)
    leases = Leases(store)
    now = utcnow()
    with store.session() as session:
        session.add(
            Lease(
                key=KEY,
                holder="another-machine:4242:1",
                operation="reboot",
                actor="api:bob",
                acquired=now,
                expires=now + timedelta(seconds=1.5),
            )
        )
    with (
        pytest.raises(Busy, match="VM x is busy: reboot by api:bob"),
        leases.hold(KEY, "start", actor="cli:me", what="VM x"),
    ):
        pass
    with leases.hold(KEY, "start", actor="cli:me", wait=True, timeout=10):
        assert leases.current(KEY).actor == "cli:me"  # type: ignore[union-attr]
    assert leases.current(KEY) is None  # released
    store.dispose()


def test_renewal_keeps_a_long_holder_alive(url: str) -> None:
    ready = FORK.Event()
    ttl = 0.6  # renewed every 0.2 s; the holder keeps it 2.5 s, four ttls
    holder = FORK.Process(target=_hold, args=(url, ttl, ready, 2.5))
    holder.start()
    store = Store(url)
    try:
        assert ready.wait(30)
        leases = Leases(store)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            with pytest.raises(Busy), leases.hold(KEY, "start", actor="cli:me"):
                pass
            time.sleep(0.1)
        holder.join(10)
        with leases.hold(KEY, "start", actor="cli:me"):
            pass  # free once the holder ended
    finally:
        if holder.is_alive():
            holder.kill()
        store.dispose()
