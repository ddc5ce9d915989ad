"""A recovery action for the recovery tests on the real daemon, importable by the processes
they start (a test module's own registrations would exist only in pytest's process)."""

from __future__ import annotations

from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import libvirt_errors
from kvmgr.services.steps import recovery_action


@recovery_action("test.core.volume.delete")
def delete_volume(conn: Connection, args: dict[str, Any]) -> None:
    """Delete volume ``name`` of pool ``pool`` if it exists (idempotent, like every action)."""
    with libvirt_errors(f"looking up pool {args['pool']}"):
        pool = conn.virconn.storagePoolLookupByName(args["pool"])
        pool.refresh(0)
    try:
        vol = pool.storageVolLookupByName(args["name"])
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return
        raise
    with libvirt_errors(f"deleting volume {args['name']}"):
        vol.delete(0)
