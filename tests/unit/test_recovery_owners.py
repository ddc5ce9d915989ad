"""A delete that recovery finishes drops the owner records of what it removed (and only those):
a process killed inside a ``net delete`` leaves the record, the next process finishes the delete
and the record goes; what still exists keeps its owner.  libvirt's test driver, per file."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.control import ownership
from kvmgr.control.objects import ISO_POOL, net_key
from kvmgr.control.plane import ControlPlane
from kvmgr.control.recovery_owners import forget_removed
from kvmgr.services.object_undo import (
    NETWORK_FINISH_DELETE,
    POOL_FINISH_DELETE,
    VOLUME_FINISH_DELETE,
)
from kvmgr.services.steps import Record
from kvmgr.store import users
from kvmgr.store.db import Store
from kvmgr.store.models import Role

FORK = multiprocessing.get_context("fork")
HOST = "local"
_NODE = """<node>
<network><name>lan</name><bridge name='virbr9'/>
<ip address='192.168.99.1' netmask='255.255.255.0'/></network>
<pool type='dir'><name>data</name><target><path>/data</path></target></pool>
<pool type='dir'><name>kvmgr-isos</name><target><path>/isos</path></target></pool>
<domain type='test'><name>web</name><uuid>5a1c3f7e-8d2b-4c6a-9e0f-1b2c3d4e5f60</uuid>
<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>
</node>"""


@pytest.fixture
def node(tmp_path: Path) -> str:
    path = tmp_path / "node.xml"
    path.write_text(_NODE)
    return f"test://{path}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'kvmgr.db'}")
    yield store
    store.dispose()


def _ann(store: Store) -> users.Principal:
    with store.session() as session:
        return users.create_user(session, "ann", "long enough password", Role.operator, None)


def _volume(conn: Connection, pool: str, name: str) -> None:
    conn.virconn.storagePoolLookupByName(pool).createXML(
        f"<volume><name>{name}</name><capacity unit='MiB'>1</capacity></volume>", 0
    )


def _owned(store: Store, kind: str, key: str) -> bool:
    return ownership.owner_of(store, kind, key, host=HOST) is not None


def _delete_then_die(url: str, uri: str, ready: Any) -> None:
    """A ``net delete`` killed after its point of no return, before it removed anything."""
    conn = open_connection(uri)
    plane = ControlPlane(Store(url), "cli:victim", lambda _host: conn)
    with plane.operation("net delete", "lan", HOST, keys=[net_key(HOST, "lan")], sole=True) as s:
        s.finish_with(NETWORK_FINISH_DELETE, name="lan", force=False)
        ready.set()
        time.sleep(600)


def test_a_killed_net_delete_finished_by_recovery_forgets_the_networks_owner(
    node: str, store: Store
) -> None:
    ownership.record_owner(store, "network", "lan", _ann(store), host=HOST)
    url = str(store.engine.url)
    ready = FORK.Event()
    victim = FORK.Process(target=_delete_then_die, args=(url, node, ready))
    victim.start()
    assert ready.wait(30)
    os.kill(victim.pid or 0, signal.SIGKILL)
    victim.join(10)
    conn = open_connection(node)
    [outcome] = ControlPlane(store, "cli:next", lambda _host: conn).recover()
    assert outcome.state == "recovered"
    assert "lan" not in conn.virconn.listNetworks() + conn.virconn.listDefinedNetworks()
    assert not _owned(store, "network", "lan")


def test_only_what_is_gone_loses_its_owner(node: str, store: Store) -> None:
    conn = open_connection(node)
    ann = _ann(store)
    for name in ("a.img", "b.img"):
        _volume(conn, "data", name)
        ownership.record_owner(store, "volume", f"/data/{name}", ann, host=HOST)
    _volume(conn, ISO_POOL, "gone.iso")
    ownership.record_owner(store, "iso", "gone.iso", ann, host=HOST)
    for kind, key in [("network", "lan"), ("pool", "data"), ("vm", _uuid(conn))]:
        ownership.record_owner(store, kind, key, ann, host=HOST)
    conn.virconn.storagePoolLookupByName("data").storageVolLookupByName("a.img").delete(0)
    conn.virconn.storagePoolLookupByName(ISO_POOL).storageVolLookupByName("gone.iso").delete(0)
    finish = [
        Record(VOLUME_FINISH_DELETE, {"pool": "data", "names": ["a.img", "b.img"]}),
        Record(VOLUME_FINISH_DELETE, {"pool": ISO_POOL, "names": ["gone.iso"]}),
        Record(NETWORK_FINISH_DELETE, {"name": "lan"}),  # still defined: kept
        Record(POOL_FINISH_DELETE, {"name": "data", "volumes": ["b.img"], "path": "/data"}),
        Record("vm.delete", {"uuid": _uuid(conn), "volumes": ["/data/b.img"]}),
    ]
    forget_removed(store, conn, HOST, finish)
    assert not _owned(store, "volume", "/data/a.img")
    assert not _owned(store, "iso", "gone.iso")
    for kind, key in [
        ("volume", "/data/b.img"),
        ("network", "lan"),
        ("pool", "data"),
        ("vm", _uuid(conn)),
    ]:
        assert _owned(store, kind, key), (kind, key)


def test_a_removed_pool_and_vm_take_their_volumes_owners_with_them(node: str, store: Store) -> None:
    conn = open_connection(node)
    ann = _ann(store)
    uuid = _uuid(conn)
    for kind, key in [("pool", "data"), ("volume", "/data/x.img"), ("vm", uuid)]:
        ownership.record_owner(store, kind, key, ann, host=HOST)
    ownership.record_owner(store, "volume", "/data/kept.img", ann, host=HOST)
    pool = conn.virconn.storagePoolLookupByName("data")
    pool.destroy()
    pool.undefine()
    dom = conn.virconn.lookupByName("web")
    dom.destroy()  # the test driver starts the domains of its file
    dom.undefine()
    finish = [
        Record(POOL_FINISH_DELETE, {"name": "data", "volumes": ["x.img"], "path": "/data"}),
        Record("vm.delete", {"uuid": uuid, "volumes": ["/data/x.img"], "keep_disks": False}),
    ]
    forget_removed(store, conn, HOST, finish)
    for kind, key in [("pool", "data"), ("volume", "/data/x.img"), ("vm", uuid)]:
        assert not _owned(store, kind, key), (kind, key)
    assert _owned(store, "volume", "/data/kept.img")  # the delete named it not


def _uuid(conn: Connection) -> str:
    return str(conn.virconn.lookupByName("web").UUIDString())
