"""Storage pools through libvirt's storage API (works the same on a remote host).

What lives here: the pool a VM's disks go to made on demand (:func:`ensure_pool`, the ``default``
dir pool as virt-install makes it), and pool management for ``kvmgr pool`` and the API: list,
info, create (journaled), refresh, delete (refused while a volume is in use).  Volumes, what uses
them and the ``volume.delete`` recovery action live in :mod:`kvmgr.services.storage`; sparse
upload/download in :mod:`kvmgr.services.storage_transfer`.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.connect.uri import is_local
from kvmgr.errors import (
    AlreadyExists,
    InvalidInput,
    InvalidState,
    NotFound,
    Unsupported,
    libvirt_errors,
    translate,
)
from kvmgr.names import validate_existing_name, validate_name
from kvmgr.services.object_undo import POOL_DELETE, POOL_FINISH_DELETE, STEP_DONE
from kvmgr.services.steps import Steps, owned_steps
from kvmgr.xml.storage import StoragePool, StorageVolume

DEFAULT_POOL = "default"
DEFAULT_POOL_PATH = "/var/lib/libvirt/images"


def ensure_pool(
    conn: Connection, name: str = DEFAULT_POOL, path: str | None = None
) -> libvirt.virStoragePool:
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
        pool = _define_or_take(conn, name, path or DEFAULT_POOL_PATH)
    if not pool.isActive():
        with libvirt_errors(f"starting storage pool {name}"):
            try:
                pool.create(0)
            except libvirt.libvirtError:
                if not pool.isActive():  # else another create started it meanwhile: fine
                    raise
    return pool


def _define_or_take(conn: Connection, name: str, path: str) -> libvirt.virStoragePool:
    """Define the dir pool, or take the one another process or thread defined meanwhile (two
    creates on a fresh host both find no ``default`` pool; the second define is refused)."""
    try:
        return _define_dir_pool(conn, name, path)
    except AlreadyExists:
        with libvirt_errors(f"looking up storage pool {name}"):
            try:
                return conn.virconn.storagePoolLookupByName(name)
            except libvirt.libvirtError:
                pass
        raise


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


POOL_TYPES = ("dir",)


@dataclass(frozen=True)
class PoolInfo:
    name: str
    type: str | None
    path: str | None
    active: bool
    autostart: bool
    capacity: int
    allocation: int
    available: int
    volumes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lookup_pool(conn: Connection, name: str) -> libvirt.virStoragePool:
    validate_existing_name(name, what="pool name")
    try:
        return conn.virconn.storagePoolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise NotFound(
                f"storage pool {name!r} does not exist", hint="see 'kvmgr pool list'"
            ) from err
        raise translate(err, f"looking up storage pool {name}") from err


def _active_pool(conn: Connection, name: str) -> libvirt.virStoragePool:
    pool = _lookup_pool(conn, name)
    if not pool.isActive():
        raise InvalidState(
            f"storage pool {name!r} is not running",
            hint=f"start it with 'kvmgr pool refresh {name}'",
        )
    return pool


def _pool_info(pool: libvirt.virStoragePool) -> PoolInfo:
    with libvirt_errors(f"reading storage pool {pool.name()}"):
        model = StoragePool.from_xml(pool.XMLDesc(0))
        active = bool(pool.isActive())
        _state, capacity, allocation, available = pool.info()
        volumes = pool.numOfVolumes() if active else 0
        autostart = bool(pool.autostart())
    return PoolInfo(
        name=pool.name(),
        type=model.type,
        path=model.target_path,
        active=active,
        autostart=autostart,
        capacity=capacity,
        allocation=allocation,
        available=available,
        volumes=volumes,
    )


def list_pools(conn: Connection) -> list[PoolInfo]:
    with libvirt_errors("listing storage pools"):
        pools = conn.virconn.listAllStoragePools(0)
    return sorted((_pool_info(pool) for pool in pools), key=lambda info: info.name)


def pool_info(conn: Connection, name: str) -> PoolInfo:
    return _pool_info(_lookup_pool(conn, name))


def create_pool(
    conn: Connection,
    name: str,
    path: str,
    pool_type: str = "dir",
    *,
    steps: Steps | None = None,
) -> PoolInfo:
    """Define, build (mkdir), start and autostart a pool; undo every step if one fails (journaled
    in ``steps``, so a killed process's next kvmgr undoes it too)."""
    validate_name(name, what="pool name")
    if pool_type not in POOL_TYPES:
        raise Unsupported(f"pool type {pool_type!r} is not supported yet", hint="use --type dir")
    if not path.startswith("/") or "\x00" in path:
        raise InvalidInput(f"pool path {path!r} must be an absolute path")
    path = posixpath.normpath(path)
    with libvirt_errors(f"looking up storage pool {name}"):
        if name in conn.virconn.listStoragePools() + conn.virconn.listDefinedStoragePools():
            raise AlreadyExists(f"storage pool {name!r} already exists", hint="choose another name")
    for other in list_pools(conn):
        if other.path == path:
            raise AlreadyExists(f"pool {other.name!r} already uses {path}", hint="use that pool")
    # A local daemon shares our file system: knowing the directory is new lets an undo remove it.
    made_dir = is_local(conn.uri) and not conn.is_test_driver and not os.path.exists(path)
    spec = StoragePool()
    spec.type, spec.name, spec.target_path = pool_type, name, path
    with owned_steps(conn, steps) as journal:
        journal.undo_with(POOL_DELETE, name=name, remove_dir=made_dir)
        with libvirt_errors(f"defining storage pool {name} at {path}"):
            pool = conn.virconn.storagePoolDefineXML(spec.to_xml(), 0)
        with libvirt_errors(f"creating the directory {path} of pool {name}"):
            pool.build(0)
        with libvirt_errors(f"starting storage pool {name}"):
            pool.create(0)
            pool.setAutostart(1)
    return _pool_info(pool)


def refresh_pool(conn: Connection, name: str) -> PoolInfo:
    """Rescan the pool's directory (starting the pool first if it is stopped)."""
    pool = _lookup_pool(conn, name)
    with libvirt_errors(f"refreshing storage pool {name}"):
        if not pool.isActive():
            pool.create(0)
        pool.refresh(0)
    return _pool_info(pool)


@dataclass(frozen=True)
class PoolDeletion:
    pool: str
    deleted_volumes: list[str]
    directory_removed: bool
    kept_files: list[str] = field(default_factory=list)


#: What a forced pool delete deletes: disk and ISO images, by format or by name.  A dir pool
#: lists *every* file in its directory as a (raw) volume; other files are never deleted.
IMAGE_FORMATS = frozenset({"qcow2", "qed", "vmdk", "vdi", "vpc", "vhdx", "iso", "luks", "cloop"})
IMAGE_SUFFIXES = (".img", ".qcow2", ".qcow", ".raw", ".iso", ".vmdk", ".vdi", ".vhd", ".vhdx")


def _is_image(vol: libvirt.virStorageVol) -> bool:
    if vol.name().lower().endswith(IMAGE_SUFFIXES):
        return True
    with libvirt_errors(f"reading volume {vol.name()}"):
        return StorageVolume.from_xml(vol.XMLDesc(0)).target_format in IMAGE_FORMATS


def delete_pool(
    conn: Connection, name: str, *, force: bool = False, steps: Steps | None = None
) -> PoolDeletion:
    """Remove a pool.  Safety first:

    * refused while any VM (or another volume, as a backing file) uses one of its volumes;
    * refused while it holds volumes, unless ``force``: then exactly its volumes are deleted,
      and of what libvirt lists only disk and ISO images (:func:`_is_image`): any other file in
      a dir pool's directory is kept (and so is the directory);
    * its directory is removed only when empty afterwards and only for ``dir`` pools (libvirt's
      delete of other pool types would wipe a device or volume group kvmgr was not given).

    Once the checks pass the delete is journaled as one intent (``pool.finish_delete`` with
    the volumes it will delete) before anything is removed: recovery finishes it.
    """
    # Volume usage is the volumes module's, which builds on this one: imported here, not above.
    from kvmgr.services.storage import volume_users

    pool = _lookup_pool(conn, name)
    info = _pool_info(pool)
    volumes: list[libvirt.virStorageVol] = []
    if info.active:
        with libvirt_errors(f"listing volumes of pool {name}"):
            pool.refresh(0)
            volumes = pool.listAllVolumes(0)
    usage = volume_users(conn)
    used = {vol.name(): usage[vol.path()] for vol in volumes if usage.get(vol.path())}
    if used:
        detail = "; ".join(f"{vol} by {', '.join(users)}" for vol, users in sorted(used.items()))
        raise InvalidState(
            f"pool {name!r} has volumes in use: {detail}",
            hint="delete or detach those VMs' disks first",
        )
    if volumes and not force:
        raise InvalidState(
            f"pool {name!r} holds {len(volumes)} volume(s): "
            + ", ".join(sorted(vol.name() for vol in volumes)),
            hint="delete them first, or add --force to delete them with the pool",
        )
    doomed = sorted((vol for vol in volumes if _is_image(vol)), key=lambda vol: vol.name())
    kept = sorted(vol.name() for vol in volumes if vol not in doomed)
    deleted: list[str] = []
    with owned_steps(conn, steps) as journal:
        journal.finish_with(
            POOL_FINISH_DELETE,
            name=name,
            volumes=sorted(vol.name() for vol in doomed),
            dir_pool=info.type == "dir",
            path=info.path,  # for recovery's owner records (control/recovery_owners.py)
        )
        for vol in doomed:
            journal.progress(f"deleting volume {vol.name()} of pool {name}")
            with libvirt_errors(f"deleting volume {vol.name()} of pool {name}"):
                vol.delete(0)
            deleted.append(vol.name())
            journal.finish_with(STEP_DONE, what=f"volume {vol.name()} deleted")
        removed = remove_pool(pool, name, dir_pool=info.type == "dir")
    return PoolDeletion(name, sorted(deleted), removed, kept)


def remove_pool(pool: libvirt.virStoragePool, name: str, *, dir_pool: bool) -> bool:
    """Stop and undefine; True when the (empty) directory of a dir pool was removed too."""
    removed = False
    with libvirt_errors(f"deleting storage pool {name}"):
        if pool.isActive():
            pool.destroy()
        if dir_pool:
            try:
                pool.delete(0)  # rmdir: fails, harmlessly, if anything is left inside
                removed = True
            except libvirt.libvirtError:
                removed = False  # files libvirt does not list as volumes stay where they are
        pool.undefine()
    return removed
