"""What a new or changed VM definition builds on: its networks, pools and volumes, held against
deletion (:meth:`kvmgr.services.steps.Steps.uses`) and found still there before it is defined.

A create checks its network at the start and defines the VM much later; a ``net delete`` from
another process in between would leave a VM on a network that is gone (libvirt defines it: the
network is looked up only at start).  So, just before each define, every network, pool and
volume the definition names is used (the control plane's shared lease: deletes are refused
from then on) and then looked up again: what was deleted before the use was taken is found
missing here, and the create fails and is undone instead of defining.
"""

from __future__ import annotations

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import NotFound, libvirt_errors
from kvmgr.services.steps import Steps
from kvmgr.xml.domain import Disk, Domain


def use_network(conn: Connection, steps: Steps, name: str, *, require: bool = True) -> None:
    """Hold network ``name`` and make sure it (still) exists (unless not ``require``)."""
    steps.uses("network", name)
    if not require:
        return
    with libvirt_errors(f"looking up network {name}"):
        try:
            conn.virconn.networkLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
            raise NotFound(
                f"network {name!r} does not exist (deleted meanwhile?)",
                hint="'kvmgr net list' shows the networks",
            ) from err


def use_pool(conn: Connection, steps: Steps, name: str) -> None:
    """Hold pool ``name`` (where a volume is about to be made) and make sure it exists."""
    steps.uses("pool", name)
    with libvirt_errors(f"looking up storage pool {name}"):
        try:
            conn.virconn.storagePoolLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            raise NotFound(
                f"storage pool {name!r} does not exist (deleted meanwhile?)",
                hint="'kvmgr pool list' shows the pools",
            ) from err


def use_path(conn: Connection, steps: Steps, path: str) -> None:
    """Hold the volume at ``path`` and its pool, when a pool knows it (a plain file is nobody's
    to delete through kvmgr), and make sure it is still there."""
    from kvmgr.services.storage import find_volume_by_path

    with libvirt_errors(f"looking up the volume at {path}"):
        vol = find_volume_by_path(conn, path)
        if vol is None:
            return
        pool = vol.storagePoolLookupByVolume().name()
        name = vol.name()
    steps.uses("pool", pool)
    steps.uses("volume", pool, name)
    with libvirt_errors(f"looking up the volume at {path}"):
        if find_volume_by_path(conn, path) is None:
            raise NotFound(
                f"volume {pool}/{name} ({path}) does not exist (deleted meanwhile?)",
                hint=f"'kvmgr vol list {pool}' shows the volumes",
            )


def use_definition(
    conn: Connection, steps: Steps, domain: Domain, *, require_networks: bool = True
) -> None:
    """Hold everything ``domain`` names (networks, pools, volumes) and make sure it is there:
    call it right before the define.  A restore (``require_networks`` False) defines a VM whose
    network this host may lack, as it always did: it is held, not required."""
    for nic in domain.devices.interfaces:
        if nic.type == "network" and nic.source_network:
            use_network(conn, steps, str(nic.source_network), require=require_networks)
    for disk in domain.devices.disks:
        use_disk(conn, steps, disk)


def use_disk(conn: Connection, steps: Steps, disk: Disk) -> None:
    if disk.type == "volume" and disk.source_pool and disk.source_volume:
        use_pool(conn, steps, str(disk.source_pool))
        steps.uses("volume", str(disk.source_pool), str(disk.source_volume))
    elif disk.source_path:
        use_path(conn, steps, str(disk.source_path))


__all__ = ["use_definition", "use_disk", "use_network", "use_path", "use_pool"]
