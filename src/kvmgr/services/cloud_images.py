"""The cloud image library: qcow2/raw images stored once in a pool as protected bases.

``kvmgr image import PATH --os ID`` uploads the image through the libvirt stream (so a remote
host works the same) into the pool ``kvmgr-images`` with mode 0444; VMs get linked qcow2
overlays of it, and kvmgr refuses to delete a base any overlay needs (storage.volume_users).
What the image holds (its OS) is kept beside it in a small JSON volume ``NAME.kvmgr.json``,
in the same pool, so the library needs no database and no local state.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.connect.uri import is_local
from kvmgr.errors import AlreadyExists, InvalidInput, NotFound, libvirt_errors
from kvmgr.names import validate_name
from kvmgr.services.install_media import VolumeReader
from kvmgr.services.steps import Steps, owned_steps
from kvmgr.services.storage_pools import ensure_pool

IMAGE_POOL = "kvmgr-images"
IMAGE_POOL_PATH = "/var/lib/kvmgr/images"
_META_SUFFIX = ".kvmgr.json"
_QCOW2_MAGIC = b"QFI\xfb"


@dataclass(frozen=True)
class CloudImage:
    name: str
    os_id: str
    format: str
    path: str
    size: int  # virtual size: the smallest disk a VM made from it can have
    source: str
    imported: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pool(conn: Connection) -> libvirt.virStoragePool:
    return ensure_pool(conn, IMAGE_POOL, IMAGE_POOL_PATH)


def _image_format(path: str) -> tuple[str, int]:
    """qcow2 or raw, and the virtual size (qcow2's header, else the file's size)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(32)
            size = os.fstat(handle.fileno()).st_size
    except OSError as err:
        raise NotFound(f"cloud image {path!r}: {err.strerror}", hint="give an image file") from err
    if size == 0:
        raise InvalidInput(f"cloud image {path!r} is empty")
    if header[:4] == _QCOW2_MAGIC:
        if int.from_bytes(header[8:16], "big"):  # a backing file name offset
            raise InvalidInput(
                f"{path!r} is an overlay of another image",
                hint="import a standalone image (qemu-img convert it first)",
            )
        return "qcow2", int.from_bytes(header[24:32], "big")
    if header[:4] in (b"KDMV", b"conectix"[:4], b"vhdx") or header[:3] == b"\x3c\x3c\x3c":
        raise InvalidInput(f"{path!r} is not qcow2 or raw", hint="convert it with qemu-img")
    return "raw", size


def import_image(
    conn: Connection,
    path: str,
    *,
    os_id: str,
    name: str | None = None,
    steps: Steps | None = None,
) -> CloudImage:
    """Store the image at ``path`` as a protected base volume named ``name`` (undone if a step
    fails; journaled in ``steps``, so after a kill -9 the next kvmgr undoes it)."""
    from kvmgr.osinfo import get_profile
    from kvmgr.services.storage import upload_volume

    get_profile(os_id)  # NotFound with a hint for an OS osinfo-db does not know
    fmt, virtual_size = _image_format(path)
    name = validate_name(name or os.path.basename(path), what="image name")
    if name.endswith(_META_SUFFIX):
        raise InvalidInput(f"image name {name!r} is reserved", hint="choose another name")
    pool = _pool(conn)
    with libvirt_errors(f"looking up image {name}"):
        existing = {vol.name() for vol in pool.listAllVolumes(0)}
    if name in existing:
        raise AlreadyExists(f"image {name!r} already exists", hint="choose another --name")
    with owned_steps(conn, steps) as journal:
        journal.undo_with("volume.delete", pool=IMAGE_POOL, name=name)
        info = upload_volume(conn, IMAGE_POOL, name, path)
        if is_local(conn.uri):
            # qemu opens bases read-only; nobody should write them.  (libvirt has no call to
            # change a volume's mode after it is made; a remote base keeps the pool's mode.)
            with contextlib.suppress(OSError):
                os.chmod(info.path, 0o444)
        image = CloudImage(
            name=name,
            os_id=os_id,
            format=fmt,
            path=info.path,
            size=virtual_size,
            source=os.path.abspath(path),
            imported=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        record = json.dumps(image.as_dict(), indent=1).encode()
        from kvmgr.services.install_media import upload_bytes

        upload_bytes(conn, IMAGE_POOL, name + _META_SUFFIX, record, journal)
    return image


def _read_record(conn: Connection, vol: libvirt.virStorageVol) -> dict[str, Any] | None:
    try:
        reader = VolumeReader(conn, vol)
        data = reader.read()
        return json.loads(data) if data else None
    except (ValueError, libvirt.libvirtError):
        return None


def list_images(conn: Connection) -> list[CloudImage]:
    """The library's images; none (and no pool made) before the first import."""
    try:
        pool = conn.virconn.storagePoolLookupByName(IMAGE_POOL)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return []
        raise
    if not pool.isActive():
        pool = _pool(conn)
    with libvirt_errors("listing cloud images"):
        pool.refresh(0)
        volumes = {vol.name(): vol for vol in pool.listAllVolumes(0)}
    images = []
    for name, vol in sorted(volumes.items()):
        if not name.endswith(_META_SUFFIX) or name.removesuffix(_META_SUFFIX) not in volumes:
            continue
        record = _read_record(conn, vol)
        if record is not None:
            with contextlib.suppress(TypeError):
                images.append(CloudImage(**record))
    return images


def get_image(conn: Connection, name: str) -> CloudImage:
    for image in list_images(conn):
        if image.name == name:
            return image
    raise NotFound(
        f"cloud image {name!r} is not in the library",
        hint="'kvmgr image list' shows them; add one with 'kvmgr image import PATH --os ID'",
    )


def delete_image(conn: Connection, name: str, steps: Steps | None = None) -> None:
    """Remove an image nobody's overlay needs (its volume and its metadata's): journaled as
    one intent (``volume.finish_delete`` of both) before it acts, so recovery finishes it."""
    from kvmgr.services.object_undo import STEP_DONE, VOLUME_FINISH_DELETE
    from kvmgr.services.storage import volume_users

    image = get_image(conn, name)
    users = volume_users(conn).get(image.path, [])
    if users:
        raise InvalidInput(
            f"cloud image {name!r} is the base of {', '.join(sorted(users))}",
            hint="delete those VMs (or their disks) first",
        )
    pool = _pool(conn)
    volumes = [name, name + _META_SUFFIX]
    with (
        owned_steps(conn, steps) as journal,
        libvirt_errors(f"deleting cloud image {name}"),
    ):
        journal.finish_with(VOLUME_FINISH_DELETE, pool=pool.name(), names=volumes)
        for volume in volumes:
            with contextlib.suppress(libvirt.libvirtError):
                pool.storageVolLookupByName(volume).delete(0)
            if volume == name:
                journal.finish_with(STEP_DONE, what=f"image volume {name} deleted")
