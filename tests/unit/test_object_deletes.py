"""Deletes of networks, pools and volumes are journaled and rolled forward (test driver): cut
after each journal record and recovered as another process would, the object is gone entirely
and nothing else changed; a delete refused by its checks journals nothing.  (kill -9 on the real
daemon, pool files and ISOs: tests/integration/test_kill9_objects.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import InvalidState
from kvmgr.services import networks, storage, storage_pools
from kvmgr.services.steps import Steps
from tests.steps_harness import Cut, CutSteps, recover_elsewhere
from tests.testdriver import reset_default_test_driver

NET = networks.NetworkSpec(name="d-net", mode="isolated", subnet="10.230.5.0/24")


@pytest.fixture
def conn() -> Iterator[Connection]:
    reset_default_test_driver()
    connection = open_connection("test:///default")
    yield connection
    connection.close()
    reset_default_test_driver()


def _state(conn: Connection) -> dict[str, Any]:
    pools = {}
    for pool in conn.virconn.listAllStoragePools(0):
        if pool.isActive():
            pool.refresh(0)
        pools[pool.name()] = sorted(pool.listVolumes()) if pool.isActive() else None
    nets = {net.name(): bool(net.isActive()) for net in conn.virconn.listAllNetworks(0)}
    return {"networks": nets, "pools": pools}


def _make_net(conn: Connection, _tmp: Path) -> None:
    networks.create_network(conn, NET)


def _make_pool(conn: Connection, tmp: Path) -> None:
    storage_pools.create_pool(conn, "d-pool", str(tmp / "d-pool"))
    for name in ("a.qcow2", "b.img", "c.qcow2"):
        storage.create_pool_volume(conn, "d-pool", name, "1M")


def _make_vol(conn: Connection, _tmp: Path) -> None:
    storage.create_pool_volume(conn, "default-pool", "d-vol.img", "1M")
    if "d-other.img" not in conn.virconn.storagePoolLookupByName("default-pool").listVolumes():
        storage.create_pool_volume(conn, "default-pool", "d-other.img", "1M")  # must survive


Setup = Callable[[Connection, Path], None]
Delete = Callable[[Connection, Steps], object]
DELETES: dict[str, tuple[Setup, Delete, Callable[[dict[str, Any]], None]]] = {
    "net delete": (
        _make_net,
        lambda c, s: networks.delete_network(c, "d-net", steps=s),
        lambda state: state["networks"].pop("d-net"),
    ),
    "pool delete --force": (
        _make_pool,
        lambda c, s: storage_pools.delete_pool(c, "d-pool", force=True, steps=s),
        lambda state: state["pools"].pop("d-pool"),
    ),
    "vol delete": (
        _make_vol,
        lambda c, s: storage.delete_pool_volume(c, "default-pool", "d-vol.img", s),
        lambda state: state["pools"]["default-pool"].remove("d-vol.img"),
    ),
}


@pytest.mark.parametrize("name", list(DELETES))
def test_cut_after_each_record_then_recovered_finishes_the_delete(
    conn: Connection, tmp_path: Path, name: str
) -> None:
    setup, delete, without = DELETES[name]
    setup(conn, tmp_path)
    expected = _state(conn)
    without(expected)  # the state with the object gone and nothing else touched
    full = CutSteps()
    delete(conn, full)
    assert full.count >= 1 and full.finish, "a delete must journal its intent before acting"
    assert _state(conn) == expected
    for cut in range(1, full.count + 1):
        setup(conn, tmp_path)
        journal = CutSteps(cut)
        with pytest.raises(Cut):
            delete(conn, journal)
        assert recover_elsewhere(conn, journal) == []  # rolled forward, as a whole
        assert _state(conn) == expected, (name, cut)
        assert recover_elsewhere(conn, journal) == []  # and again: idempotent
        assert _state(conn) == expected, (name, cut)


def test_pool_delete_cut_halfway_through_its_volumes(conn: Connection, tmp_path: Path) -> None:
    _make_pool(conn, tmp_path)
    journal = CutSteps(3)  # intent, volume a deleted, volume b deleted: c left
    with pytest.raises(Cut):
        storage_pools.delete_pool(conn, "d-pool", force=True, steps=journal)
    assert _state(conn)["pools"]["d-pool"] == ["c.qcow2"]
    assert recover_elsewhere(conn, journal) == []
    assert "d-pool" not in _state(conn)["pools"]


def test_a_refused_delete_journals_nothing(conn: Connection, tmp_path: Path) -> None:
    _make_pool(conn, tmp_path)
    journal = CutSteps()
    with pytest.raises(InvalidState, match="holds 3 volume"):
        storage_pools.delete_pool(conn, "d-pool", steps=journal)  # no --force
    with pytest.raises(InvalidState, match="used by VMs: test"):
        networks.delete_network(conn, "default", steps=journal)
    assert journal.count == 0
