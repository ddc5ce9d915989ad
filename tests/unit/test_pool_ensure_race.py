"""Two creates on a fresh host both find no ``default`` pool: the second define is refused by
libvirt ("already exists"), and that create must take the pool the first made, not fail (the
replicas test saw 1 of 100 concurrent API creates fail so).  A test:/// host of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.services import storage_pools
from tests.testdriver import private_hosts

_EMPTY = "<node></node>"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Connection]:
    with private_hosts(tmp_path, _EMPTY, count=1) as (conn,):
        yield conn


def test_a_pool_defined_between_the_lookup_and_the_define_is_taken(
    host: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_lookup = host.virconn.storagePoolLookupByName
    other = "<pool type='dir'><name>default</name><target><path>/images</path></target></pool>"

    def missing_then_defined(_name: str) -> libvirt.virStoragePool:
        # The first lookup misses; "another process" defines the pool right after it.
        monkeypatch.setattr(host.virconn, "storagePoolLookupByName", real_lookup)
        host.virconn.storagePoolDefineXML(other, 0)
        raise _no_pool()

    monkeypatch.setattr(host.virconn, "storagePoolLookupByName", missing_then_defined)
    pool = storage_pools.ensure_pool(host)
    assert pool.name() == "default" and pool.isActive()
    assert len(host.virconn.listAllStoragePools()) == 1


def _no_pool() -> libvirt.libvirtError:
    err = libvirt.libvirtError("storage pool not found")
    err.err = (libvirt.VIR_ERR_NO_STORAGE_POOL, 0, "no storage pool", 2, "", None, None, 0, 0)
    return err
