"""A VM create uses the network, pool and volumes it names: their deletes from another process
are refused while it runs, and two creates on one network run side by side (SQLite and
PostgreSQL, real processes).

Each child process runs a real ``create_vm`` (its own test driver) in a journaled operation of
the control plane and stops inside it (a ``customize`` hook, after its volume is made, before the
define) until the test lets it go.  The CLI of this process is then refused ``net delete``,
``pool delete``, ``vol delete`` with the create's name, and changes nothing.  The race with the
real daemon is tests/integration/test_object_uses.py.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from kvmgr.cli.main import app
from kvmgr.connect import open_connection
from kvmgr.control import plane as plane_module
from kvmgr.control.hosts import HostRegistry
from kvmgr.control.objects import net_key, pool_key
from kvmgr.control.plane import ControlPlane, vm_name_key
from kvmgr.errors import Busy
from kvmgr.services.create import DiskRequest, NicRequest, VMSpec, create_vm
from kvmgr.statedir import url_from_environment
from kvmgr.store.db import Store
from kvmgr.units import MIB
from tests.api.test_postgres import pg_url

__all__ = ["pg_url"]  # the PostgreSQL fixture, used by the parametrised `shared_url`
FORK = multiprocessing.get_context("fork")
URI = "test:///default"


def kvmgr(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["-c", URI, *args], env={"COLUMNS": "200"})
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture
def host() -> Iterator[str]:
    store = Store(url_from_environment())
    try:
        yield HostRegistry(store).ensure_uri(URI).name
    finally:
        store.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shared_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return url_from_environment()
    url: str = request.getfixturevalue("pg_url")
    Store(url).dispose()  # migrated once, before the race
    return url


def _create(url: str, host: str, name: str, inside: Any, leave: Any) -> None:
    """A VM create on the test driver, stopped between its volume and its define."""
    store = Store(url)
    conn = open_connection(URI)
    plane = ControlPlane(store, "cli:other", lambda _host: conn, ttl=600)

    def pause(_domain: object) -> None:
        inside.set()
        leave.wait(120)

    spec = VMSpec(
        name,
        memory=64 * MIB,
        vcpus=1,
        disks=[DiskRequest(size=MIB, pool="default-pool")],
        nics=[NicRequest(source="default")],
        graphics="none",
        start=False,
        customize=[pause],
    )
    with plane.operation("create", name, host, [vm_name_key(host, name)]) as steps:
        create_vm(conn, spec, steps=steps)
    store.dispose()


@pytest.fixture
def creates(shared_url: str, host: str) -> Iterator[tuple[list[multiprocessing.Process], Any]]:
    """Two processes, each inside a create on network ``default`` and pool ``default-pool``."""
    leave = FORK.Event()
    started = []
    for name in ("t-use-a", "t-use-b"):
        inside = FORK.Event()
        process = FORK.Process(target=_create, args=(shared_url, host, name, inside, leave))
        process.start()
        started.append((process, inside))
    try:
        # Both inside at once: the second did not wait for the first to finish.
        for _process, inside in started:
            assert inside.wait(60)
        yield [process for process, _inside in started], leave
    finally:
        leave.set()
        for process, _inside in started:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(10)


def test_two_creates_on_one_network_proceed_and_deletes_are_refused(
    creates: tuple[list[multiprocessing.Process], Any], shared_url: str, host: str
) -> None:
    processes, leave = creates
    if shared_url != url_from_environment():
        # The CLI uses the SQLite store: ask the shared store directly.
        plane = ControlPlane(Store(shared_url), "cli:me", lambda _host: None)  # type: ignore[arg-type,return-value]
        for key in (net_key(host, "default"), pool_key(host, "default-pool")):
            with (
                pytest.raises(
                    Busy, match=r"is in use: create t-use-[ab] by cli:other since .* \(and 1 more\)"
                ),
                plane.lease(key, "delete", sole=True),
            ):
                pass
        plane.store.dispose()
    else:
        for command, what in (
            (("net", "delete", "default"), "network default"),
            (("pool", "delete", "default-pool", "--force"), "pool default-pool"),
            (
                ("vol", "delete", "default-pool", "t-use-a.qcow2"),
                "volume default-pool/t-use-a.qcow2",
            ),
        ):
            code, output = kvmgr(*command)
            assert code == 1, output
            assert f"{what} is in use: create t-use-" in output, output
            assert "by cli:other since" in output, output
        code, output = kvmgr("net", "info", "default", "-o", "json")
        assert code == 0 and '"active": true' in output, output  # refused: nothing changed
    leave.set()
    for process in processes:
        process.join(30)
        assert process.exitcode == 0  # both creates defined their VMs


def _delete(url: str, host: str, inside: Any) -> None:
    store = Store(url)
    plane = ControlPlane(store, "cli:other", lambda _host: None, ttl=600)  # type: ignore[arg-type,return-value]
    with plane.lease(net_key(host, "default"), "delete", sole=True):
        inside.set()
        time.sleep(600)


def test_a_create_waits_for_a_delete_then_is_refused_naming_it_and_a_dead_deleter_frees(
    shared_url: str, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plane_module, "USE_WAIT", 0.5)
    inside = FORK.Event()
    deleter = FORK.Process(target=_delete, args=(shared_url, host, inside))
    deleter.start()
    store = Store(shared_url)
    plane = ControlPlane(store, "cli:me", lambda _host: None)  # type: ignore[arg-type,return-value]
    try:
        assert inside.wait(30)
        busy = "network default is busy: delete by cli:other since"
        with (
            pytest.raises(Busy, match=busy),
            plane.operation("create", "t-use-c", host) as steps,
        ):
            steps.uses("network", "default")
        os.kill(deleter.pid or 0, signal.SIGKILL)
        deleter.join(10)
        began = time.monotonic()
        with plane.operation("create", "t-use-c", host) as steps:  # its holder died: at once
            steps.uses("network", "default")
            assert plane.uses.users(net_key(host, "default").key)
        assert time.monotonic() - began < 5
        assert plane.uses.users(net_key(host, "default").key) == []  # released at the end
    finally:
        if deleter.is_alive():
            deleter.kill()
        deleter.join(10)
        store.dispose()


def test_the_end_of_an_operation_marks_it_done_and_releases_everything(shared_url: str) -> None:
    """The end of a journaled operation (one statement on PostgreSQL): done, its records gone,
    its leases and uses released, in the database as in this process's registry."""
    from sqlalchemy import select

    from kvmgr.control.journal import record_count
    from kvmgr.control.models import Lease, Operation
    from kvmgr.services.steps import ACTIONS, recovery_action

    if "test.uses.noop" not in ACTIONS:
        recovery_action("test.uses.noop")(lambda _conn, _args: None)
    store = Store(shared_url)
    plane = ControlPlane(store, "cli:me", lambda _host: None)  # type: ignore[arg-type,return-value]
    try:
        with plane.operation("create", "t-use-end", "end-host", ["vm:end-host/u1"]) as steps:
            steps.undo_with("test.uses.noop", what="x")
            steps.uses("network", "end-net")
            op_id = steps.operation_id  # type: ignore[attr-defined]
        with store.session() as session:
            op = session.get(Operation, op_id)
            assert op is not None and op.state == "done" and op.finished is not None
            left = session.scalars(select(Lease.key).where(Lease.key.like("%end-%"))).all()
        assert left == [] and record_count(store, op_id) == 0
        assert not plane.leases.holds("vm:end-host/u1")
        with plane.lease("vm:end-host/u1", "start"):  # free again, here as for others
            pass
    finally:
        store.dispose()
