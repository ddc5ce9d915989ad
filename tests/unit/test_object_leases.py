"""Leases of networks, pools, volumes, ISOs and images between real processes.

Another process (forked, its own engine) holds an object's lease as a kvmgr command would; the
CLI (in this process, on libvirt's test driver) is refused with the holder's name and shows it in
``net info`` / ``pool info``; once the holder is killed with SIGKILL the same command goes through
at once.  Two processes running operations on one network serialise, on one SQLite file and on
one PostgreSQL server.  Refused commands change
nothing, so the test driver (shared by this process's tests) is left as it was.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kvmgr.cli.main import app
from kvmgr.control.hosts import HostRegistry
from kvmgr.control.leases import Leases
from kvmgr.control.objects import image_key, iso_key, net_key, pool_key, vol_key
from kvmgr.control.plane import ControlPlane
from kvmgr.statedir import url_from_environment
from kvmgr.store.db import Store
from tests.api.test_postgres import pg_url

__all__ = ["pg_url"]  # the PostgreSQL fixture, used by the parametrised `shared_url`
FORK = multiprocessing.get_context("fork")
URI = "test:///default"


def kvmgr(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["-c", URI, *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.fixture
def host() -> Iterator[str]:
    """The registered name of the test driver's host (the CLI's ``-c`` registers the same)."""
    store = Store(url_from_environment())
    try:
        yield HostRegistry(store).ensure_uri(URI).name
    finally:
        store.dispose()


def _hold(url: str, keys: list[str], ready: object) -> None:
    store = Store(url)
    leases = Leases(store, ttl=600)  # never expires in the test: only its death frees it
    for key in keys:
        leases.take(key, "net create nightly", actor="cli:other")
    ready.set()  # type: ignore[attr-defined]
    time.sleep(600)


@pytest.fixture
def holder(host: str) -> Iterator[multiprocessing.Process]:
    """A process holding the leases of the test driver's network, pool and a volume."""
    keys = [
        net_key(host, "default").key,
        pool_key(host, "default-pool").key,
        vol_key(host, "default-pool", "t-lease.img").key,
        iso_key(host, "t-lease.iso").key,
        image_key(host, "t-lease-image").key,
    ]
    ready = FORK.Event()
    process = FORK.Process(target=_hold, args=(url_from_environment(), keys, ready))
    process.start()
    try:
        assert ready.wait(30)
        yield process  # type: ignore[misc]
    finally:
        if process.is_alive():
            process.kill()
        process.join(10)


BUSY = "is busy: net create nightly by cli:other since"


@pytest.mark.parametrize(
    "command",
    [
        ("net", "stop", "default"),
        ("net", "start", "default"),
        ("net", "autostart", "default", "--disable"),
        ("net", "delete", "default"),
        ("net", "reserve", "default", "--ip", "192.168.122.50", "--mac", "52:54:00:00:00:50"),
        ("net", "unreserve", "default", "--ip", "192.168.122.50"),
        ("net", "set", "default", "--group", "team-a"),
        ("pool", "refresh", "default-pool"),
        ("pool", "delete", "default-pool"),
        ("pool", "set", "default-pool", "--no-group"),
        ("vol", "create", "default-pool", "t-lease.img", "--size", "1M"),
        ("vol", "resize", "default-pool", "t-lease.img", "--size", "2M"),
        ("vol", "delete", "default-pool", "t-lease.img"),
        ("iso", "delete", "t-lease.iso"),
        ("image", "delete", "t-lease-image"),
    ],
    ids=lambda command: "-".join(command[:2]),
)
def test_a_command_on_an_object_another_process_works_on_is_refused(
    holder: multiprocessing.Process, command: tuple[str, ...]
) -> None:
    code, output = kvmgr(*command)
    assert code == 1, output
    assert BUSY in " ".join(output.split()), output


def test_info_shows_who_is_busy_and_the_holders_death_frees_the_object(
    holder: multiprocessing.Process, tmp_path: Path
) -> None:
    for kind, name in (("net", "default"), ("pool", "default-pool")):
        code, shown = kvmgr(kind, "info", name, "-o", "json")
        assert code == 0, shown
        assert '"busy": "net create nightly by cli:other since' in shown, shown
    os.kill(holder.pid or 0, signal.SIGKILL)
    holder.join(10)
    began = time.monotonic()
    for group in ("--group=team-a", "--no-group"):  # the holder was of this machine: no ttl
        code, output = kvmgr("net", "set", "default", group)
        assert code == 0, output
    assert time.monotonic() - began < 10
    code, shown = kvmgr("pool", "info", "default-pool", "-o", "json")
    assert '"busy": null' in shown, shown


def _operate(url: str, key_host: str, log: str, rounds: int, name: str) -> None:
    """Run ``rounds`` journaled operations on the network (waiting for its lease)."""
    store = Store(url)
    plane = ControlPlane(store, f"cli:{name}", _no_libvirt)
    for _ in range(rounds):
        with plane.operation(
            "net create", "default", key_host, [net_key(key_host, "default")], wait=True, timeout=60
        ):
            with open(log, "a") as out:
                out.write(f"in {name}\n")
            time.sleep(0.005)
            with open(log, "a") as out:
                out.write(f"out {name}\n")
    store.dispose()


def _no_libvirt(_host: str) -> Any:
    raise AssertionError("the operations never fail, so they never undo on libvirt")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shared_url(request: pytest.FixtureRequest) -> str:
    """The CLI's SQLite file, or a throw-away PostgreSQL server (tests/api/test_postgres.py)."""
    if request.param == "sqlite":
        return url_from_environment()
    url: str = request.getfixturevalue("pg_url")
    Store(url).dispose()  # migrated once, before the race
    return url


def test_two_processes_on_one_network_serialise(shared_url: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    rounds = 10
    host = "lease-test"
    workers = [
        FORK.Process(target=_operate, args=(shared_url, host, str(log), rounds, name))
        for name in ("a", "b")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 4 * rounds
    for entry, leave in zip(lines[::2], lines[1::2], strict=True):
        assert entry.startswith("in ") and leave == "out " + entry[3:], lines
    assert {line[-1] for line in lines} == {"a", "b"}
