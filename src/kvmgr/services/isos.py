"""The ISO library: installation ISOs imported into a storage pool, with the OS each one holds.

Everything goes through libvirt's storage API (pool, volume, upload stream), so importing into a
remote host works like importing into this one.

Where detection results live: kvmgr keeps the ISO's *volume descriptor* (volume id, system id,
publisher, application, size: 200 bytes) in a small JSON file in the kvmgr cache directory, keyed
by the volume's path, size and mtime as libvirt reports them.  The OS is matched from that
descriptor each time (about a millisecond), so an osinfo-db upgrade that learns a new OS
re-labels old ISOs without reading them again, and replacing an ISO file invalidates its entry.
Import fills the cache from the local file it uploads; ``list_isos`` reads a descriptor only for
an ISO it has not seen: from the volume's path on a local connection, through a 64 KiB
``virStorageVol.download`` on a remote one.  Nothing is written next to the ISOs, so the pool
holds exactly what the user imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.connect.uri import is_local
from kvmgr.errors import (
    AlreadyExists,
    InvalidInput,
    InvalidState,
    NotFound,
    OperationFailed,
    libvirt_errors,
)
from kvmgr.names import validate_name
from kvmgr.osinfo import Detection, IsoDescriptor, detect_descriptor, read_descriptor
from kvmgr.osinfo.iso import SECTOR_SIZE, parse_descriptor_set
from kvmgr.services import vms
from kvmgr.services.steps import Steps, owned_steps
from kvmgr.services.storage import undo_volume_args
from kvmgr.xml.domain import Domain
from kvmgr.xml.storage import StorageVolume

ISO_POOL = "kvmgr-isos"
POOL_BASE_DIR = "/var/lib/kvmgr"
ISO_POOL_PATH = f"{POOL_BASE_DIR}/isos"
_UPLOAD_CHUNK = 1024 * 1024
# Enough of an image to hold the system area and the whole volume descriptor set.
_HEADER_BYTES = 16 * SECTOR_SIZE + 16 * SECTOR_SIZE

Progress = Callable[[int, int], None]  # (bytes sent, total bytes)


@dataclass(frozen=True)
class IsoInfo:
    name: str
    pool: str
    path: str
    size: int
    os_id: str  # osinfo short id, or "generic" for unknown media
    os_name: str
    matched: bool
    volume_id: str


# ----------------------------------------------------------------------------------- pool
def _pool_path(pool: str) -> str:
    return ISO_POOL_PATH if pool == ISO_POOL else f"{POOL_BASE_DIR}/{pool}"


def _ensure_pool(conn: Connection, pool: str) -> libvirt.virStoragePool:
    """The ISO pool, created on first use as an autostarted dir pool (see services.storage)."""
    from kvmgr.services.storage_pools import ensure_pool

    storage_pool = ensure_pool(conn, pool, _pool_path(pool))
    with libvirt_errors(f"refreshing storage pool {pool}"):
        storage_pool.refresh(0)  # files added behind libvirt's back become volumes
    return storage_pool


def _lookup_pool(conn: Connection, pool: str) -> libvirt.virStoragePool | None:
    validate_name(pool, what="pool name")
    try:
        storage_pool = conn.virconn.storagePoolLookupByName(pool)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return None
        raise
    with libvirt_errors(f"refreshing storage pool {pool}"):
        if not storage_pool.isActive():
            storage_pool.create(0)
        storage_pool.refresh(0)
    return storage_pool


def _lookup_volume(storage_pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    try:
        return storage_pool.storageVolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


# ----------------------------------------------------------------------------------- cache
_cache_lock = threading.Lock()


def _cache_file() -> Path:
    from kvmgr.osinfo.db import cache_path

    return cache_path().with_name("iso-descriptors.json")


def _cache_key(path: str, size: int, mtime: str | None) -> str:
    return f"{path}|{size}|{mtime or '-'}"


def _read_cache() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _update_cache(changes: dict[str, dict[str, Any] | None]) -> None:
    """Add (value) or drop (None) entries; a read-only cache directory only costs speed."""
    with _cache_lock:
        cache = _read_cache()
        for key, value in changes.items():
            if value is None:
                cache.pop(key, None)
            else:
                cache[key] = value
        try:
            target = _cache_file()
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(target)
        except OSError:
            pass


def _descriptor_from_cache(entry: dict[str, Any]) -> IsoDescriptor | None:
    try:
        return IsoDescriptor(**entry)
    except TypeError:
        return None


# ----------------------------------------------------------------------------------- volumes
@dataclass(frozen=True)
class _VolumeFacts:
    name: str
    path: str
    size: int
    mtime: str | None


def _volume_facts(vol: libvirt.virStorageVol) -> _VolumeFacts:
    """Name, path, size and mtime from one XMLDesc call."""
    spec = StorageVolume.from_xml(vol.XMLDesc(0))
    mtime = spec.element.findtext("./target/timestamps/mtime")
    return _VolumeFacts(
        name=spec.name or vol.name(),
        path=spec.target_path or vol.path(),
        size=spec.capacity or 0,
        mtime=mtime.strip() if mtime else None,
    )


def _read_volume_descriptor(
    conn: Connection, vol: libvirt.virStorageVol, path: str
) -> IsoDescriptor:
    """The descriptor of an ISO volume: read the file locally, else download its first sectors."""
    if is_local(conn.uri) and os.access(path, os.R_OK):
        return read_descriptor(path)
    stream = conn.virconn.newStream(0)
    chunks: list[bytes] = []

    def collect(_stream: libvirt.virStream, data: bytes, _opaque: object) -> int:
        chunks.append(data)
        return len(data)

    with libvirt_errors(f"reading the header of ISO {path}"):
        vol.download(stream, 0, _HEADER_BYTES, 0)
        stream.recvAll(collect, None)
        stream.finish()
    return parse_descriptor_set(path, b"".join(chunks))


def _info(pool: str, facts: _VolumeFacts, detection: Detection) -> IsoInfo:
    return IsoInfo(
        name=facts.name,
        pool=pool,
        path=facts.path,
        size=facts.size,
        os_id=detection.profile.short_id,
        os_name=detection.profile.name if detection.matched else "unknown media",
        matched=detection.matched,
        volume_id=detection.volume_id,
    )


# ----------------------------------------------------------------------------------- import
def _default_name(path: str) -> str:
    name = os.path.basename(path)
    try:
        return validate_name(name, what="ISO name")
    except InvalidInput as err:
        raise InvalidInput(err.message, hint="choose a name with --name") from err


def _create_volume(
    storage_pool: libvirt.virStoragePool, name: str, size: int
) -> libvirt.virStorageVol:
    spec = StorageVolume()
    spec.name = name
    spec.capacity = size
    spec.capacity_unit = "bytes"
    spec.allocation = 0
    spec.target_format = "iso"
    with libvirt_errors(f"creating volume {name}"):
        return storage_pool.createXML(spec.to_xml(), 0)


def _upload(
    conn: Connection, vol: libvirt.virStorageVol, path: str, size: int, progress: Progress | None
) -> None:
    stream = conn.virconn.newStream(0)
    sent = 0
    try:
        with open(path, "rb") as source:
            vol.upload(stream, 0, size, 0)
            while chunk := source.read(_UPLOAD_CHUNK):
                view = memoryview(chunk)
                while view:
                    count = stream.send(view.tobytes())
                    view = view[count:]
                    sent += count
                if progress is not None:
                    progress(sent, size)
        stream.finish()
    except BaseException:
        # The stream may already be dead; the caller deletes the volume either way.
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise
    if sent != size:
        raise OperationFailed(f"uploading {path} sent {sent} of {size} bytes (file changed?)")


def import_iso(
    conn: Connection,
    path: str | Path,
    name: str | None = None,
    pool: str = ISO_POOL,
    *,
    progress: Progress | None = None,
    steps: Steps | None = None,
) -> IsoInfo:
    """Upload the ISO file at ``path`` into ``pool`` (created on first use) and detect its OS.

    Refuses a file that is not an ISO 9660 image and a name that exists.  A failed upload
    deletes the partial volume (journaled in ``steps``: after a kill -9, the next kvmgr does).
    """
    source = os.path.abspath(os.fspath(path))
    descriptor = read_descriptor(source)  # NotFound / InvalidInput("not an ISO image")
    name = validate_name(name, what="ISO name") if name else _default_name(source)
    size = os.path.getsize(source)
    storage_pool = _ensure_pool(conn, pool)
    with libvirt_errors(f"looking up volume {name} in pool {pool}"):
        if _lookup_volume(storage_pool, name) is not None:
            raise AlreadyExists(
                f"an ISO named {name!r} exists in pool {pool}",
                hint="choose another name with --name, or delete the old one",
            )
    with owned_steps(conn, steps) as journal:
        journal.undo_with("volume.delete", **undo_volume_args(storage_pool, name))
        vol = _create_volume(storage_pool, name, size)
        with libvirt_errors(f"uploading {source} to volume {name}"):
            _upload(conn, vol, source, size, progress)
        _verify_size(vol, name, size)
        with libvirt_errors(f"reading volume {name}"):
            facts = _volume_facts(vol)
    stored = IsoDescriptor(**{**asdict(descriptor), "path": facts.path})
    _update_cache({_cache_key(facts.path, facts.size, facts.mtime): asdict(stored)})
    return _info(pool, facts, detect_descriptor(stored))


def _verify_size(vol: libvirt.virStorageVol, name: str, size: int) -> None:
    with libvirt_errors(f"checking volume {name}"):
        _kind, capacity, _allocation = vol.info()
    if capacity != size:
        raise OperationFailed(
            f"volume {name} holds {capacity} bytes after the upload, expected {size}",
            hint="the pool may be full; check 'kvmgr pool list'",
        )


# ----------------------------------------------------------------------------------- list
def list_isos(conn: Connection, pool: str = ISO_POOL) -> list[IsoInfo]:
    """Every volume of the ISO pool with its detected OS (empty when the pool does not exist)."""
    with libvirt_errors(f"listing ISOs in pool {pool}"):
        storage_pool = _lookup_pool(conn, pool)
        if storage_pool is None:
            return []
        volumes = storage_pool.listAllVolumes(0)
        facts = [_volume_facts(vol) for vol in volumes]
    cache = _read_cache()
    fresh: dict[str, dict[str, Any] | None] = {}
    result: list[IsoInfo] = []
    for vol, fact in zip(volumes, facts, strict=True):
        key = _cache_key(fact.path, fact.size, fact.mtime)
        descriptor = _descriptor_from_cache(cache[key]) if key in cache else None
        if descriptor is None:
            try:
                descriptor = _read_volume_descriptor(conn, vol, fact.path)
            except InvalidInput:
                descriptor = IsoDescriptor(fact.path, "", "", "", "", fact.size, False)
            fresh[key] = asdict(descriptor)
        result.append(_info(pool, fact, detect_descriptor(descriptor)))
    if fresh:
        _update_cache(fresh)
    return sorted(result, key=lambda info: info.name)


# ----------------------------------------------------------------------------------- delete
def domains_using(conn: Connection, path: str, pool: str, name: str) -> list[str]:
    """Names of defined or running domains with a disk whose source is this volume."""
    users = {
        dom.name()
        for dom, domain in vms.all_definitions(conn)
        if _uses_volume(domain, path, pool, name)
    }
    return sorted(users)


def _uses_volume(domain: Domain, path: str, pool: str, name: str) -> bool:
    for disk in domain.devices.disks:
        if disk.source_path == path:
            return True
        if disk.source_pool == pool and disk.source_volume == name:
            return True
    return False


def delete_iso(
    conn: Connection, name: str, pool: str = ISO_POOL, steps: Steps | None = None
) -> None:
    """Delete an imported ISO; refused while any VM has it as a disk or CD-ROM.  Journaled as
    its intent (``volume.finish_delete``) before it acts: recovery finishes it (the cache of
    what ISOs hold keeps the stale entry then; it is keyed by path, size and time, so harmless)."""
    from kvmgr.services.object_undo import VOLUME_FINISH_DELETE

    validate_name(name, what="ISO name")
    with libvirt_errors(f"looking up ISO {name}"):
        storage_pool = _lookup_pool(conn, pool)
        vol = _lookup_volume(storage_pool, name) if storage_pool is not None else None
        if vol is None:
            raise NotFound(f"no ISO named {name!r} in pool {pool}", hint="see 'kvmgr iso list'")
        facts = _volume_facts(vol)
    users = domains_using(conn, facts.path, pool, name)
    if users:
        raise InvalidState(
            f"ISO {name} is in use by {', '.join(users)}",
            hint="eject it from those VMs (or delete the VMs) first",
        )
    with owned_steps(conn, steps) as journal, libvirt_errors(f"deleting ISO {name}"):
        journal.finish_with(VOLUME_FINISH_DELETE, pool=pool, names=[name])
        vol.delete(0)
    _update_cache({_cache_key(facts.path, facts.size, facts.mtime): None})


# ----------------------------------------------------------------------------------- resolve
def resolve_iso(conn: Connection, ref: str, pool: str = ISO_POOL) -> str:
    """The host path of an ISO given an imported ISO's name or a path to an existing .iso file."""
    looks_like_path = os.sep in ref or ref.endswith(".iso")
    if looks_like_path and os.path.isfile(ref):
        return os.path.abspath(ref)
    try:
        validate_name(ref, what="ISO name")
    except InvalidInput:
        raise NotFound(
            f"ISO {ref!r} is neither an imported ISO nor an existing file",
            hint="import it with 'kvmgr iso import PATH' or give the full path of an .iso file",
        ) from None
    with libvirt_errors(f"looking up ISO {ref}"):
        storage_pool = _lookup_pool(conn, pool)
        vol = _lookup_volume(storage_pool, ref) if storage_pool is not None else None
        if vol is not None:
            return str(vol.path())
    raise NotFound(
        f"ISO {ref!r} is neither an imported ISO nor an existing file",
        hint="see 'kvmgr iso list', or give the full path of an .iso file",
    )
