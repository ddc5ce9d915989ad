"""QA on the real daemon (qemu:///system): the defects found by hand there stay fixed.

Objects use the prefix ``t-qa-``; the pool lives in a temporary directory.  Everything is removed
at the end, also when a test fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput
from kvmgr.services import storage, storage_pools
from kvmgr.services.create import DiskRequest, NicRequest, VMSpec, create_vm
from kvmgr.units import MIB
from tests.integration.conftest import purge_prefix

PREFIX = "t-qa-"
POOL = "t-qa-pool"


@pytest.fixture(scope="module")
def pool(conn: Connection, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("t-qa-pool") / "pool"
    purge_prefix(conn, PREFIX)
    storage_pools.create_pool(conn, POOL, str(directory))
    try:
        yield POOL
    finally:
        purge_prefix(conn, PREFIX)


def _volumes(conn: Connection) -> set[str]:
    pool = conn.virconn.storagePoolLookupByName(POOL)
    pool.refresh(0)
    return {vol.name() for vol in pool.listAllVolumes(0)}


def test_upload_of_a_directory_makes_no_volume(conn: Connection, pool: str, tmp_path: Path) -> None:
    before = _volumes(conn)
    with pytest.raises(InvalidInput, match="is a directory"):
        storage.upload_volume(conn, pool, "t-qa-up", str(tmp_path))
    assert _volumes(conn) == before


def test_download_to_bad_targets_is_refused_and_a_good_one_round_trips(
    conn: Connection, pool: str, tmp_path: Path
) -> None:
    source = tmp_path / "data.img"
    source.write_bytes(b"kvmgr-qa" * 1000)
    storage.upload_volume(conn, pool, "t-qa-round", str(source))
    with pytest.raises(InvalidInput, match="does not exist"):
        storage.download_volume(conn, pool, "t-qa-round", str(tmp_path / "no" / "out.img"))
    with pytest.raises(InvalidInput, match="is a directory"):
        storage.download_volume(conn, pool, "t-qa-round", str(tmp_path), overwrite=True)
    target = tmp_path / "out.img"
    storage.download_volume(conn, pool, "t-qa-round", str(target))
    assert target.read_bytes()[:8000] == source.read_bytes()


def test_unknown_nic_model_leaves_nothing_behind(conn: Connection, pool: str) -> None:
    spec = VMSpec(name="t-qa-nicmodel", memory=128 * MIB, vcpus=1, start=False)
    spec.disks = [DiskRequest(size=16 * MIB, pool=pool)]
    spec.nics = [NicRequest(source="default", model="bogus")]
    with pytest.raises(InvalidInput, match="NIC model 'bogus'"):
        create_vm(conn, spec)
    with pytest.raises(libvirt.libvirtError):
        conn.virconn.lookupByName("t-qa-nicmodel")
    assert not any(name.startswith("t-qa-nicmodel") for name in _volumes(conn))
