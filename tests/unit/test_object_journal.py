"""The journals of making networks, pools, volumes, ISOs and cloud images (test driver): cut after
each record and recovered as another process would, nothing is left; a failed call undoes itself;
and the undo keeps what someone uses by the time it runs (kill -9 on the real daemon:
tests/integration/test_kill9_objects.py)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import Unsupported
from kvmgr.services import isos, networks, storage, storage_pools
from kvmgr.services.create import VMSpec, create_vm
from kvmgr.services.steps import Steps
from kvmgr.units import MIB
from tests.steps_harness import Cut, CutSteps, recover_elsewhere
from tests.testdriver import reset_default_test_driver

NET = networks.NetworkSpec(name="j-net", mode="isolated", subnet="10.230.4.0/24")


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
    return {"networks": sorted(conn.virconn.listNetworks()), "pools": pools}


def _iso(path: Path) -> Path:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="JOURNAL")
    payload = b"journal test\n" * 64
    iso.add_fp(io.BytesIO(payload), len(payload), "/README.TXT;1")
    iso.write(str(path))
    iso.close()
    return path


Make = Callable[[Connection, Path, Steps], object]
OPERATIONS: dict[str, Make] = {  # uploads: the test driver has none (see below)
    "net create": lambda c, d, s: networks.create_network(c, NET, steps=s),
    "pool create": lambda c, d, s: storage_pools.create_pool(c, "j-pool", str(d / "pool"), steps=s),
    "vol create": lambda c, d, s: storage.create_pool_volume(
        c, "default-pool", "j-vol", "16M", steps=s
    ),
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "source.img").write_bytes(b"x" * 4096)
    _iso(tmp_path / "media.iso")
    return tmp_path


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_cut_after_each_record_then_recovered_leaves_nothing(
    conn: Connection, workdir: Path, name: str
) -> None:
    isos._ensure_pool(conn, isos.ISO_POOL)  # the library pool is kept: not the operation's
    before = _state(conn)
    full = CutSteps()
    OPERATIONS[name](conn, workdir, full)
    assert full.count >= 1, "no journal record: a killed process would leave it behind"
    assert _state(conn) != before
    assert recover_elsewhere(conn, full) == []  # the finished operation, undone as a whole
    assert _state(conn) == before
    for cut in range(1, full.count + 1):
        journal = CutSteps(cut)
        with pytest.raises(Cut):
            OPERATIONS[name](conn, workdir, journal)
        assert recover_elsewhere(conn, journal) == []
        assert _state(conn) == before, (name, cut)


@pytest.mark.parametrize("name", ["vol upload", "iso import"])
def test_a_failed_upload_leaves_no_volume(conn: Connection, workdir: Path, name: str) -> None:
    """The test driver has no upload: the volume made for it is undone, in-process (a library
    call) and from the journal (the faces' operations)."""
    isos._ensure_pool(conn, isos.ISO_POOL)
    before = _state(conn)
    upload: dict[str, Callable[[Steps | None], object]] = {
        "vol upload": lambda s: storage.upload_volume(
            conn, "default-pool", "j-up", str(workdir / "source.img"), steps=s
        ),
        "iso import": lambda s: isos.import_iso(conn, workdir / "media.iso", "j.iso", steps=s),
    }
    with pytest.raises(Unsupported, match="not supported"):
        upload[name](None)
    assert _state(conn) == before
    journal = CutSteps()
    with pytest.raises(Unsupported):
        upload[name](journal)
    assert journal.count == 1
    assert _state(conn) != before  # the journal's owner (the control plane) undoes it
    assert recover_elsewhere(conn, journal) == []
    assert _state(conn) == before


def test_an_existing_volume_is_never_recorded_for_undo(conn: Connection) -> None:
    storage.create_pool_volume(conn, "default-pool", "j-vol", "16M")
    journal = CutSteps()
    with pytest.raises(Exception, match="already exists"):
        storage.create_pool_volume(conn, "default-pool", "j-vol", "16M", steps=journal)
    assert journal.count == 0  # an undo would have deleted the volume that was there
    assert "j-vol" in _state(conn)["pools"]["default-pool"]


def test_undo_keeps_a_network_a_vm_uses_by_then(conn: Connection) -> None:
    journal = CutSteps()
    networks.create_network(conn, NET, steps=journal)
    spec = VMSpec("j-user", memory=64 * MIB, vcpus=1, disks=[], graphics="none", start=False)
    spec.nics = [networks_nic("j-net")]
    create_vm(conn, spec)
    problems = recover_elsewhere(conn, journal)
    assert any("use(s) it now, so it is kept" in p for p in problems), problems
    assert "j-net" in _state(conn)["networks"]


def test_undo_keeps_a_pool_that_holds_volumes_by_then(conn: Connection, workdir: Path) -> None:
    journal = CutSteps()
    storage_pools.create_pool(conn, "j-pool", str(workdir / "pool"), steps=journal)
    storage.create_pool_volume(conn, "j-pool", "j-data", "16M")
    problems = recover_elsewhere(conn, journal)
    assert any("holds 1 volume(s) now, so it is kept" in p for p in problems), problems
    assert _state(conn)["pools"]["j-pool"] == ["j-data"]


def networks_nic(network: str) -> Any:
    from kvmgr.services.create_policy import parse_network_option

    return parse_network_option(network)
