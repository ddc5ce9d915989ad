"""The recovery actions of networks, pools and volumes: the undo of making a network or a pool
(journaled by kvmgr.services.networks and kvmgr.services.storage_pools; a new volume has
``volume.delete`` in kvmgr.services.storage), and the finish of deleting any of them.

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
    net = network_or_none(conn, name)
    if net is None:
        return
    users = vms_using(conn, name)
    if users:
        raise InvalidState(
            f"network {name} was made by an operation that did not finish, but "
            f"{', '.join(users)} use(s) it now, so it is kept",
            hint=f"delete it with 'kvmgr net delete {name}' if it is not needed",
        )
    _remove_network(net, name)


@recovery_action(POOL_DELETE)
def undo_pool(conn: Connection, args: dict[str, Any]) -> None:
    """Undo making pool ``name``: stop and undefine it (its directory too when the operation
    made it and it is empty) unless it is gone or holds volumes now."""
    name = str(args["name"])
    pool = pool_or_none(conn, name)
    if pool is None:
        return
    with libvirt_errors(f"listing the volumes of storage pool {name}"):
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


# ------------------------------------------------------------------ deletes: rolled forward
# A delete the user asked for is finished by recovery, never undone: its intent (everything it
# will remove, fixed by the checks it passed) is one finish record written before it acts, so
# a process killed at any point leaves a record that removes the rest.  ``step.done`` records
# after each act only mark how far it got (``ops list`` shows them); they run nothing.

NETWORK_FINISH_DELETE = "network.finish_delete"
POOL_FINISH_DELETE = "pool.finish_delete"
VOLUME_FINISH_DELETE = "volume.finish_delete"
STEP_DONE = "step.done"


@recovery_action(STEP_DONE)
def step_done(conn: Connection, args: dict[str, Any]) -> None:
    """Nothing to run: where the operation had got to when it stopped."""


@recovery_action(NETWORK_FINISH_DELETE)
def finish_network_delete(conn: Connection, args: dict[str, Any]) -> None:
    """Finish deleting network ``name``: stop it and undefine it (gone already: done).

    Without ``force`` a network a VM uses by now (defined after the killed delete lost its
    lease) is kept and said so: the delete was granted for a network no VM used."""
    from kvmgr.services.networks import vms_using

    name = str(args["name"])
    net = network_or_none(conn, name)
    if net is None:
        return
    users = [] if args.get("force") else vms_using(conn, name)
    if users:
        raise InvalidState(
            f"the delete of network {name} did not finish, and {', '.join(users)} use(s) it "
            "now, so it is kept",
            hint=f"delete it with 'kvmgr net delete {name} --force' if it is not needed",
        )
    _remove_network(net, name)


def network_or_none(conn: Connection, name: str) -> libvirt.virNetwork | None:
    """Network ``name``, or None when it is gone (recovery's work is then done already)."""
    with libvirt_errors(f"looking up network {name}"):
        try:
            return conn.virconn.networkLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                return None
            raise


def pool_or_none(conn: Connection, name: str) -> libvirt.virStoragePool | None:
    """Storage pool ``name``, or None when it is gone."""
    with libvirt_errors(f"looking up storage pool {name}"):
        try:
            return conn.virconn.storagePoolLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return None
            raise


def _remove_network(net: libvirt.virNetwork, name: str) -> None:
    with libvirt_errors(f"deleting network {name}"):
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()


@recovery_action(POOL_FINISH_DELETE)
def finish_pool_delete(conn: Connection, args: dict[str, Any]) -> None:
    """Finish deleting pool ``name``: delete the volumes ``volumes`` the delete was granted (and
    no other: a file that appeared since stays, and so does the directory then), stop the pool,
    remove its directory when ``dir_pool`` and empty, undefine it."""
    from kvmgr.services.storage_pools import remove_pool

    name = str(args["name"])
    pool = pool_or_none(conn, name)
    if pool is None:
        return
    with libvirt_errors(f"looking up storage pool {name}"):
        if pool.isActive():
            _delete_unused(conn, pool, name, [str(vol) for vol in args.get("volumes", [])])
    remove_pool(pool, name, dir_pool=bool(args.get("dir_pool")))


@recovery_action(VOLUME_FINISH_DELETE)
def finish_volume_delete(conn: Connection, args: dict[str, Any]) -> None:
    """Finish deleting the volumes ``names`` of pool ``pool`` (those gone already: done)."""
    name = str(args["pool"])
    pool = pool_or_none(conn, name)
    if pool is None:
        return
    with libvirt_errors(f"looking up storage pool {name}"):
        if not pool.isActive():
            return  # its volumes cannot be reached: a stopped pool's volumes are not deleted
    _delete_unused(conn, pool, name, [str(vol) for vol in args["names"]])


def _delete_unused(
    conn: Connection, pool: libvirt.virStoragePool, pool_name: str, names: list[str]
) -> None:
    """Delete the volumes ``names`` of ``pool`` that still exist; one a VM (or an overlay) uses
    by now is kept and said so, after the others are deleted."""
    from kvmgr.services.storage import volume_users

    with libvirt_errors(f"refreshing storage pool {pool_name}"):
        pool.refresh(0)
    usage = volume_users(conn)
    kept: list[str] = []
    for vol_name in names:
        with libvirt_errors(f"deleting volume {vol_name} of pool {pool_name}"):
            try:
                vol = pool.storageVolLookupByName(vol_name)
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    continue
                raise
            if usage.get(vol.path()):
                kept.append(f"{vol_name} (used by {', '.join(usage[vol.path()])})")
                continue
            vol.delete(0)
    if kept:
        raise InvalidState(
            f"the delete in pool {pool_name} did not finish, and {', '.join(kept)} is in use "
            "now, so it is kept",
            hint="detach it from those VMs, then delete it",
        )
