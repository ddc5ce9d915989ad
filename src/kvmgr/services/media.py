"""Changing what a VM's CD-ROM holds (eject, insert), and renaming a VM: one libvirt call each.

virsh users change media with ``change-media`` and rename with ``domrename``; these are the
same operations through libvirt-python.  The CD-ROM tray is changed live when the VM runs and in
its definition when it is persistent, so the next boot sees the same medium.
"""

from __future__ import annotations

import copy

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import AlreadyExists, InvalidInput, InvalidState, NotFound, libvirt_errors
from kvmgr.names import validate_name
from kvmgr.services.vms import definition, is_active_state, lookup, state_of
from kvmgr.xml.domain import Disk


def _cdrom(dom: libvirt.virDomain, name: str, target: str | None) -> Disk:
    """The CD-ROM drive ``target`` (vda-style name), or the only one the VM has."""
    drives = [disk for disk in definition(dom).devices.disks if disk.device == "cdrom"]
    if target is not None:
        drives = [disk for disk in drives if disk.target_dev == target]
    if not drives:
        which = f" {target}" if target else ""
        raise NotFound(
            f"VM {name!r} has no CD-ROM drive{which}",
            hint=f"'kvmgr vm info {name}' lists its disks; 'kvmgr vm disk add {name} --cdrom ISO' "
            "adds a drive",
        )
    if len(drives) > 1:
        targets = ", ".join(str(disk.target_dev) for disk in drives)
        raise InvalidInput(
            f"VM {name!r} has several CD-ROM drives ({targets})", hint="name one with --target"
        )
    return drives[0]


def _flags(dom: libvirt.virDomain) -> int:
    flags = 0
    if is_active_state(state_of(dom)):
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    if dom.isPersistent():
        flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
    return flags


def _change_media(dom: libvirt.virDomain, drive: Disk, source: str | None, doing: str) -> None:
    changed = Disk(copy.deepcopy(drive.element))
    for attr in ("source_file", "source_dev", "source_pool", "source_volume"):
        setattr(changed, attr, None)
    changed.alias = None
    if source is not None:
        changed.type = "file"
        changed.source_file = source
    changed.readonly = True
    with libvirt_errors(doing):
        # FORCE: a guest that locked the tray (a mounted disc) must not block an eject
        dom.updateDeviceFlags(
            changed.to_xml(), _flags(dom) | libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE
        )


def eject(conn: Connection, name: str, target: str | None = None) -> str | None:
    """Empty the CD-ROM drive; returns the path it held (None when it was empty already)."""
    dom = lookup(conn, name)
    drive = _cdrom(dom, name, target)
    held = drive.source_path
    if held is not None:
        _change_media(dom, drive, None, f"ejecting the CD-ROM of VM {name}")
    return held


def insert(conn: Connection, name: str, iso_path: str, target: str | None = None) -> str | None:
    """Put ``iso_path`` (already authorised by the caller) in the drive; returns what it held."""
    dom = lookup(conn, name)
    drive = _cdrom(dom, name, target)
    held = drive.source_path
    _change_media(dom, drive, iso_path, f"inserting {iso_path} into VM {name}")
    return held


def rename(conn: Connection, name: str, new_name: str) -> None:
    """Give a shut-off VM a new name (its UUID, disks, snapshots and owner stay)."""
    validate_name(new_name, what="VM name")
    dom = lookup(conn, name)
    if is_active_state(state_of(dom)):
        raise InvalidState(
            f"VM {name!r} is running: libvirt renames only shut-off VMs",
            hint=f"'kvmgr vm shutdown {name}' first",
        )
    try:
        conn.virconn.lookupByName(new_name)
    except libvirt.libvirtError:
        pass
    else:
        raise AlreadyExists(f"a VM named {new_name!r} exists already")
    with libvirt_errors(f"renaming VM {name} to {new_name}"):
        dom.rename(new_name, 0)
