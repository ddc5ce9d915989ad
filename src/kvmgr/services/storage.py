"""Storage pools and volumes through libvirt's storage API (works the same on a remote host)."""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import AlreadyExists, InvalidInput, NotFound, libvirt_errors
from kvmgr.names import validate_name
from kvmgr.units import format_size
from kvmgr.xml.storage import StoragePool, StorageVolume

DEFAULT_POOL = "default"
DEFAULT_POOL_PATH = "/var/lib/libvirt/images"
VOLUME_FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class VolumeRef:
    """Where a volume lives: enough to attach it to a domain or delete it later."""

    pool: str
    name: str
    path: str
    format: str


def ensure_pool(conn: Connection, name: str = DEFAULT_POOL, path: str | None = None) -> libvirt.virStoragePool:
    """Return the active pool ``name``; define, build and start a dir pool at ``path`` if missing.

    Only the ``default`` pool (at /var/lib/libvirt/images) is made without an explicit path, as
    virt-install does.
    """
    validate_name(name, what="pool name")
    with libvirt_errors(f"looking up storage pool {name}"):
        try:
            pool = conn.virconn.storagePoolLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            pool = None
    if pool is None:
        if path is None and name != DEFAULT_POOL:
            raise NotFound(
                f"storage pool {name!r} does not exist",
                hint=f"create it with 'kvmgr pool create {name} --type dir --path PATH'",
            )
        pool = _define_dir_pool(conn, name, path or DEFAULT_POOL_PATH)
    if not pool.isActive():
        with libvirt_errors(f"starting storage pool {name}"):
            pool.create(0)
    return pool


def _define_dir_pool(conn: Connection, name: str, path: str) -> libvirt.virStoragePool:
    spec = StoragePool()
    spec.type = "dir"
    spec.name = name
    spec.target_path = path
    with libvirt_errors(f"defining storage pool {name} at {path}"):
        pool = conn.virconn.storagePoolDefineXML(spec.to_xml(), 0)
        try:
            pool.build(0)  # for a dir pool: mkdir -p with the right mode
            pool.setAutostart(1)
        except libvirt.libvirtError:
            pool.undefine()
            raise
    return pool


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
    with libvirt_errors(f"reading storage pool {pool_name}"):
        pool.refresh(0)
        _state, _capacity, _allocation, available = pool.info()
    needed = capacity if fmt == "raw" else min(capacity, 256 * 1024 * 1024)
    if needed > available:
        raise InvalidInput(
            f"pool {pool_name!r} has {format_size(available)} free, "
            f"the {fmt} disk needs {format_size(needed)}",
            hint="choose a smaller disk, another pool (--disk pool=NAME,...) or free space",
        )


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
