"""The undo actions of making a network or a storage pool (journaled by kvmgr.services.networks
and kvmgr.services.storage; volumes have ``volume.delete`` in kvmgr.services.storage).

Like every recovery action they are idempotent and careful: the object may never have been made
(the process died between the record and the act), and after a crash anything may have happened
to it since, so one that a VM (a network) or a volume (a pool) uses now is kept and said so.
"""

from __future__ import annotations

import contextlib
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import InvalidState, libvirt_errors
from kvmgr.services.steps import recovery_action

NETWORK_DELETE = "network.delete"
POOL_DELETE = "pool.delete"


@recovery_action(NETWORK_DELETE)
def undo_network(conn: Connection, args: dict[str, Any]) -> None:
    """Undo making network ``name``: stop and undefine it unless it is gone or a VM uses it."""
    from kvmgr.services.networks import vms_using

    name = str(args["name"])
    with libvirt_errors(f"looking up network {name}"):
        try:
            net = conn.virconn.networkLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                return
            raise
    users = vms_using(conn, name)
    if users:
        raise InvalidState(
            f"network {name} was made by an operation that did not finish, but "
            f"{', '.join(users)} use(s) it now, so it is kept",
            hint=f"delete it with 'kvmgr net delete {name}' if it is not needed",
        )
    with libvirt_errors(f"deleting network {name}"):
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()


@recovery_action(POOL_DELETE)
def undo_pool(conn: Connection, args: dict[str, Any]) -> None:
    """Undo making pool ``name``: stop and undefine it (its directory too when the operation
    made it and it is empty) unless it is gone or holds volumes now."""
    name = str(args["name"])
    with libvirt_errors(f"looking up storage pool {name}"):
        try:
            pool = conn.virconn.storagePoolLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return
            raise
        if pool.isActive():
            pool.refresh(0)
            volumes = pool.listVolumes()
        else:
            volumes = []
    if volumes:
        raise InvalidState(
            f"storage pool {name} was made by an operation that did not finish, but it holds "
            f"{len(volumes)} volume(s) now, so it is kept",
            hint=f"delete it with 'kvmgr pool delete {name}' if it is not needed",
        )
    with libvirt_errors(f"deleting storage pool {name}"):
        if pool.isActive():
            pool.destroy()
        if args.get("remove_dir"):
            # rmdir of a dir pool, never removing anything inside; not built yet (killed
            # before the build) or not empty, the directory stays
            with contextlib.suppress(libvirt.libvirtError):
                pool.delete(0)
        pool.undefine()
