"""Owner records of what a recovered delete removed.

A face forgets a deleted object's owner record after the delete returns (``ownership.
forget_owner``).  When the process is killed inside the delete, recovery finishes it from the
journal, and no face is left to forget: the record of a network, pool, ISO or VM that no longer
exists would stay, and would give its old owner rights over whatever later appears under the
same name (a network defined with virsh).  So after a delete is finished, the objects its
finish records name are looked up on the host, and the records of those that are gone are
dropped.  What still exists (a volume a VM came to use, kept by the delete) keeps its owner.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from typing import Any

from kvmgr.connect import Connection
from kvmgr.control.objects import ISO_POOL
from kvmgr.control.ownership import forget_owner
from kvmgr.services import storage, storage_pools, vms
from kvmgr.services.object_undo import (
    NETWORK_FINISH_DELETE,
    POOL_FINISH_DELETE,
    VOLUME_FINISH_DELETE,
    network_or_none,
    pool_or_none,
)
from kvmgr.services.steps import Record
from kvmgr.store.db import Store

Gone = Iterator[tuple[str, str]]  # (owner kind, owner key) of objects no longer there


def forget_removed(store: Store, conn: Connection, host: str, finish: list[Record]) -> None:
    """Drop the owner records of the objects ``finish`` deleted that are gone from ``host``."""
    for record in finish:
        gone = _GONE.get(record.action)
        for kind, key in gone(conn, record.args) if gone is not None else ():
            forget_owner(store, kind, key, host=host)


def _vm_gone(conn: Connection, args: dict[str, Any]) -> Gone:
    uuid = str(args["uuid"])
    if vms.by_uuid(conn, uuid) is not None:
        return
    yield "vm", uuid
    for path in [] if args.get("keep_disks") else args.get("volumes", []):
        if storage.find_volume_by_path(conn, str(path)) is None:
            yield "volume", str(path)


def _network_gone(conn: Connection, args: dict[str, Any]) -> Gone:
    name = str(args["name"])
    if network_or_none(conn, name) is None:
        yield "network", name


def _pool_gone(conn: Connection, args: dict[str, Any]) -> Gone:
    name, where = str(args["name"]), args.get("path")
    if pool_or_none(conn, name) is not None:
        return  # kept (a file appeared in it since): its volumes are the volume action's kind
    yield "pool", name
    for volume in args.get("volumes", []) if where else []:
        yield "volume", posixpath.join(str(where), str(volume))


def _volumes_gone(conn: Connection, args: dict[str, Any]) -> Gone:
    name = str(args["pool"])
    if pool_or_none(conn, name) is None:
        return
    where = storage_pools.pool_info(conn, name).path or ""
    with_path = {vol: posixpath.join(where, vol) for vol in map(str, args["names"])}
    for volume, path in with_path.items():
        if storage.find_volume_by_path(conn, path) is None:
            yield ("iso", volume) if name == ISO_POOL else ("volume", path)


_GONE: dict[str, Callable[[Connection, dict[str, Any]], Gone]] = {
    "vm.delete": _vm_gone,
    NETWORK_FINISH_DELETE: _network_gone,
    POOL_FINISH_DELETE: _pool_gone,
    VOLUME_FINISH_DELETE: _volumes_gone,
}
