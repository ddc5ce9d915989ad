"""Storage volumes through libvirt's storage API (works the same on a remote host).

What lives here: a VM's disk volumes (create, find and delete by path, names taken, the
``volume.delete`` recovery action), what uses a volume (:func:`volume_users`: VMs and overlays),
and volume management for ``kvmgr vol`` and the API (list, info, create, resize, delete).  Pools
live in :mod:`kvmgr.services.storage_pools`; sparse upload/download in
:mod:`kvmgr.services.storage_transfer` (their names are exported here too: docs/PYTHON_API.md
documents them as this module's).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import (
    AlreadyExists,
    InvalidInput,
    InvalidState,
    NotFound,
    Unsupported,
    libvirt_errors,
    translate,
)
from kvmgr.names import validate_name
from kvmgr.services.object_undo import VOLUME_FINISH_DELETE
from kvmgr.services.steps import Steps, owned_steps, recovery_action
from kvmgr.services.storage_pools import _active_pool, ensure_pool
from kvmgr.units import format_size, parse_size
from kvmgr.xml.domain import Disk
from kvmgr.xml.storage import StoragePool, StorageVolume

VOLUME_FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class VolumeRef:
    """Where a volume lives: enough to attach it to a domain or delete it later."""

    pool: str
    name: str
    path: str
    format: str


def create_volume(
    conn: Connection,
    pool_name: str,
    name: str,
    capacity: int,
    fmt: str = "qcow2",
    *,
    backing_path: str | None = None,
    backing_format: str | None = None,
) -> VolumeRef:
    """Create a sparse volume; a qcow2 with ``backing_path`` is an overlay of that file."""
    if fmt not in VOLUME_FORMATS:
        raise InvalidInput(f"disk format {fmt!r} is not supported", hint="use qcow2 or raw")
    pool = ensure_pool(conn, pool_name)
    _check_room(pool, pool_name, capacity, fmt)
    spec = StorageVolume()
    spec.name = name
    spec.capacity = capacity
    spec.capacity_unit = "bytes"
    spec.allocation = 0
    spec.target_format = fmt
    if fmt == "qcow2":
        # libvirt 9.0 otherwise writes qcow2 v2 (compat=0.10), which cannot hold the persistent
        # dirty bitmaps that checkpoints, and so incremental backups, need.
        spec.compat = "1.1"
    if backing_path:
        spec.backing_path = backing_path
        spec.backing_format = backing_format or "qcow2"
    with libvirt_errors(f"creating volume {name} in pool {pool_name}"):
        if _volume_exists(pool, name):
            raise AlreadyExists(f"volume {name!r} already exists in pool {pool_name!r}")
        vol = pool.createXML(spec.to_xml(), 0)
    return VolumeRef(pool_name, name, vol.path(), fmt)


def _volume_exists(pool: libvirt.virStoragePool, name: str) -> bool:
    try:
        pool.storageVolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return False
        raise
    return True


def _check_room(pool: libvirt.virStoragePool, pool_name: str, capacity: int, fmt: str) -> None:
    """Refuse a raw volume that cannot fit; qcow2 is sparse, so only warn-level room is needed."""
    _refresh_unless_busy(pool)
    with libvirt_errors(f"reading storage pool {pool_name}"):
        _state, _capacity, _allocation, available = pool.info()
    needed = capacity if fmt == "raw" else min(capacity, 256 * 1024 * 1024)
    if needed > available:
        raise InvalidInput(
            f"pool {pool_name!r} has {format_size(available)} free, "
            f"the {fmt} disk needs {format_size(needed)}",
            hint="choose a smaller disk, another pool (--disk pool=NAME,...) or free space",
        )


def _refresh_unless_busy(pool: libvirt.virStoragePool) -> None:
    """Refresh the pool's free space; skip it while another volume is being built in the pool.

    libvirt refuses a refresh during any volume build ("asynchronous jobs running"), so two VMs
    created at once would fail.  The free space known from before is good enough for a check.
    """
    try:
        pool.refresh(0)
    except libvirt.libvirtError as err:
        if "asynchronous jobs" not in (err.get_error_message() or ""):
            raise translate(err, f"refreshing storage pool {pool.name()}") from err


def find_volume_by_path(conn: Connection, path: str) -> libvirt.virStorageVol | None:
    """The libvirt volume behind a host path, or None when no pool knows it."""
    try:
        return conn.virconn.storageVolLookupByPath(path)
    except libvirt.libvirtError as err:
        if err.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_INVALID_ARG):
            return None
        raise


def delete_volume_by_path(conn: Connection, path: str) -> bool:
    """Delete the volume at ``path``; False when it does not exist (already gone)."""
    with libvirt_errors(f"deleting volume {path}"):
        vol = find_volume_by_path(conn, path)
        if vol is None:
            return False
        vol.delete(0)
    return True


def refuse_taken_name(conn: Connection, pool_name: str, name: str) -> None:
    """Refuse a volume name already taken in ``pool_name``, before an operation records that
    it will delete a volume of that name: undoing must never remove someone else's volume."""
    with libvirt_errors(f"looking up storage pool {pool_name}"):
        try:
            pool = conn.virconn.storagePoolLookupByName(pool_name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return  # create_volume makes the default pool, or says what is missing
            raise
        if pool.isActive() and _volume_exists(pool, name):
            raise AlreadyExists(f"volume {name!r} already exists in pool {pool_name!r}")


def planned_volume_path(conn: Connection, pool_name: str, name: str) -> str:
    """Where volume ``name`` will be in ``pool_name`` (made now if it is the default pool), known
    before it exists so an operation can record it as a VM's own first."""
    pool = ensure_pool(conn, pool_name)
    with libvirt_errors(f"reading storage pool {pool_name}"):
        target = StoragePool.from_xml(pool.XMLDesc(0)).target_path
    if not target:
        raise Unsupported(f"storage pool {pool_name!r} has no directory for new volumes")
    refuse_taken_name(conn, pool_name, name)
    return posixpath.join(target, name)


@recovery_action("volume.delete")
def undo_volume(conn: Connection, args: dict[str, Any]) -> None:
    """Undo making volume ``name`` in ``pool``: delete it unless it is gone or something uses it.

    The volume may never have been made (killed between the record and the act), and after a
    crash anything may have happened to it since, so a volume a VM definition names or another
    volume is backed by is kept: recovery must never remove what someone uses.
    """
    pool_name, name = str(args["pool"]), str(args["name"])
    with libvirt_errors(f"looking up volume {name} in pool {pool_name}"):
        try:
            vol = conn.virconn.storagePoolLookupByName(pool_name).storageVolLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() in (
                libvirt.VIR_ERR_NO_STORAGE_POOL,
                libvirt.VIR_ERR_NO_STORAGE_VOL,
            ):
                return
            raise
        path = vol.path()
    users = volume_users(conn).get(path, [])
    if users:
        raise InvalidState(
            f"volume {path} was made by an operation that did not finish, but "
            f"{', '.join(users)} use(s) it now, so it is kept",
            hint="delete it by hand if it is not needed",
        )
    with libvirt_errors(f"deleting volume {path}"):
        try:
            vol.delete(0)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise


def undo_volume_args(pool: libvirt.virStoragePool, name: str) -> dict[str, str]:
    """The ``volume.delete`` arguments for volume ``name`` about to be made in ``pool``."""
    with libvirt_errors("reading a storage pool's name"):
        return {"pool": pool.name(), "name": name}


@dataclass(frozen=True)
class VolumeInfo:
    pool: str
    name: str
    path: str
    format: str | None
    capacity: int
    allocation: int
    used_by: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# =================================================================================== usage
def volume_users(conn: Connection) -> dict[str, list[str]]:
    """Host path -> names of what uses it: VMs (disks and their backing files) and volumes
    that are backed by it (an overlay needs its base).

    One pass over all domains and pools; libvirt has no "who uses this file" call.
    """
    users: dict[str, set[str]] = {}
    from kvmgr.services.vms import all_definitions

    for dom, domain in all_definitions(conn):
        for disk in domain.devices.disks:
            for path in _disk_paths(conn, disk):
                users.setdefault(path, set()).add(f"VM {dom.name()}")
    for vol_name, backing in _volume_backings(conn):
        users.setdefault(backing, set()).add(f"volume {vol_name}")
    return {path: sorted(names) for path, names in users.items()}


def _disk_paths(conn: Connection, disk: Disk) -> list[str]:
    paths = [p for p in (disk.source_file, disk.source_dev, disk.backing_file) if p]
    if disk.source_pool and disk.source_volume:
        try:
            pool = conn.virconn.storagePoolLookupByName(disk.source_pool)
            paths.append(pool.storageVolLookupByName(disk.source_volume).path())
        except libvirt.libvirtError:
            pass  # a dangling pool/volume reference uses nothing that exists
    return paths


def _volume_backings(conn: Connection) -> Iterator[tuple[str, str]]:
    with libvirt_errors("listing storage pools"):
        pools = conn.virconn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
    for pool in pools:
        try:
            for vol in pool.listAllVolumes(0):
                backing = StorageVolume.from_xml(vol.XMLDesc(0)).backing_path
                if backing:
                    yield f"{pool.name()}/{vol.name()}", backing
        except libvirt.libvirtError:
            continue  # a pool stopped or a volume vanished while we looked


# =================================================================================== volumes
def _lookup_volume(conn: Connection, pool_name: str, name: str) -> libvirt.virStorageVol:
    pool = _active_pool(conn, pool_name)
    validate_name(name, what="volume name")
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise NotFound(
                f"volume {name!r} does not exist in pool {pool_name!r}",
                hint=f"see 'kvmgr vol list {pool_name}'",
            ) from err
        raise translate(err, f"looking up volume {name}") from err


def _volume_info(
    pool_name: str, vol: libvirt.virStorageVol, usage: dict[str, list[str]]
) -> VolumeInfo:
    with libvirt_errors(f"reading volume {vol.name()}"):
        model = StorageVolume.from_xml(vol.XMLDesc(0))
        _type, capacity, allocation = vol.info()
        path = vol.path()
    return VolumeInfo(
        pool=pool_name,
        name=vol.name(),
        path=path,
        format=model.target_format,
        capacity=capacity,
        allocation=allocation,
        used_by=usage.get(path, []),
    )


def list_volumes(conn: Connection, pool_name: str) -> list[VolumeInfo]:
    pool = _active_pool(conn, pool_name)
    with libvirt_errors(f"listing volumes of pool {pool_name}"):
        pool.refresh(0)
        vols = pool.listAllVolumes(0)
    usage = volume_users(conn)
    return sorted((_volume_info(pool_name, vol, usage) for vol in vols), key=lambda v: v.name)


def volume_info(conn: Connection, pool_name: str, name: str) -> VolumeInfo:
    vol = _lookup_volume(conn, pool_name, name)
    return _volume_info(pool_name, vol, volume_users(conn))


def create_pool_volume(
    conn: Connection,
    pool_name: str,
    name: str,
    size: str | int,
    fmt: str = "qcow2",
    *,
    steps: Steps | None = None,
) -> VolumeInfo:
    """``kvmgr vol create``: a sparse volume in an existing pool (never creates the pool)."""
    pool = _active_pool(conn, pool_name)
    validate_name(name, what="volume name")
    capacity = parse_size(size, what="volume size")
    with libvirt_errors(f"looking up volume {name} in pool {pool_name}"):
        if _volume_exists(pool, name):  # before the undo record: that would delete the old one
            raise AlreadyExists(f"volume {name!r} already exists in pool {pool_name!r}")
    with owned_steps(conn, steps) as journal:
        journal.undo_with("volume.delete", **undo_volume_args(pool, name))
        ref = create_volume(conn, pool_name, name, capacity, fmt)
    return volume_info(conn, ref.pool, ref.name)


def _refuse_if_used(conn: Connection, vol: libvirt.virStorageVol, action: str) -> None:
    users = volume_users(conn).get(vol.path())
    if users:
        raise InvalidState(
            f"cannot {action} volume {vol.name()!r}: used by {', '.join(users)}",
            hint="delete or detach it from those first",
        )


def delete_pool_volume(
    conn: Connection, pool_name: str, name: str, steps: Steps | None = None
) -> None:
    """Delete one volume; refused while a VM or an overlay volume uses it.  Journaled as its
    intent (``volume.finish_delete``) before it acts: recovery finishes it."""
    vol = _lookup_volume(conn, pool_name, name)
    _refuse_if_used(conn, vol, "delete")
    with owned_steps(conn, steps) as journal:
        journal.finish_with(VOLUME_FINISH_DELETE, pool=pool_name, names=[name])
        with libvirt_errors(f"deleting volume {name} of pool {pool_name}"):
            vol.delete(0)


def resize_volume(
    conn: Connection, pool_name: str, name: str, size: str | int, *, shrink: bool = False
) -> VolumeInfo:
    """Set the volume's capacity; shrinking (which loses data) only with ``shrink``.

    A running VM's disk is refused: the guest must be told through the VM (block resize).
    """
    vol = _lookup_volume(conn, pool_name, name)
    capacity = parse_size(size, what="volume size")
    with libvirt_errors(f"reading volume {name}"):
        current = vol.info()[1]
    if capacity < current and not shrink:
        raise InvalidState(
            f"{format_size(capacity)} is smaller than the volume's {format_size(current)}",
            hint="shrinking destroys the data at the end; add --shrink if that is intended",
        )
    running = [user for user in volume_users(conn).get(vol.path(), []) if _is_running(conn, user)]
    if running:
        raise InvalidState(
            f"volume {name!r} is a disk of running {', '.join(running)}",
            hint="stop the VM first",
        )
    flags = libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK if capacity < current else 0
    with libvirt_errors(f"resizing volume {name} to {format_size(capacity)}"):
        vol.resize(capacity, flags)
    return volume_info(conn, pool_name, name)


def _is_running(conn: Connection, user: str) -> bool:
    if not user.startswith("VM "):
        return False
    try:
        return bool(conn.virconn.lookupByName(user[3:]).isActive())
    except libvirt.libvirtError:
        return False


# Transfers (sparse upload/download) have their own module; their names stay here.
from kvmgr.services.storage_transfer import (  # noqa: E402  (it imports the helpers above)
    Progress,
    detect_format,
    download_volume,
    upload_volume,
)

__all__ = [
    "Progress",
    "VolumeRef",
    "create_volume",
    "delete_volume_by_path",
    "detect_format",
    "download_volume",
    "find_volume_by_path",
    "upload_volume",
]
