"""Reading installation ISOs and shipping boot files to a host, all through libvirt.

An ISO in a pool is read in place with pycdlib over ranged volume downloads (a few hundred KiB
for the directory and ``.treeinfo``, then the kernel and initrd), so a remote host's ISO needs
no copy here.  What a VM boots from (kernel, initrd, seed) is uploaded as volumes through the
libvirt stream: nothing assumes the host shares this machine's file system.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import libvirt

from kvmgr.connect import Connection
from kvmgr.connect.uri import is_local
from kvmgr.errors import InvalidInput, NotFound, OperationFailed, libvirt_errors
from kvmgr.osinfo.db import Media, OsEntry, get_db, media_matches
from kvmgr.osinfo.iso import IsoDescriptor, parse_descriptor_set
from kvmgr.services.steps import Steps
from kvmgr.services.storage import find_volume_by_path
from kvmgr.services.storage_pools import ensure_pool
from kvmgr.xml.storage import StorageVolume

_BLOCK = 1024 * 1024
_HEADER_BYTES = 64 * 1024


class VolumeReader(io.RawIOBase):
    """A seekable read-only file over a storage volume, read in 1 MiB ranged downloads."""

    def __init__(self, conn: Connection, vol: libvirt.virStorageVol) -> None:
        super().__init__()
        self._conn, self._vol = conn, vol
        with libvirt_errors(f"reading volume {vol.name()}"):
            self._size = int(vol.info()[1])
        self._pos = 0
        self._cache: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _block(self, index: int) -> bytes:
        if index not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            start = index * _BLOCK
            length = min(_BLOCK, self._size - start)
            chunks: list[bytes] = []

            def collect(_stream: libvirt.virStream, data: bytes, _opaque: object) -> int:
                chunks.append(data)
                return len(data)

            stream = self._conn.virconn.newStream(0)
            with libvirt_errors(f"reading volume {self._vol.name()}"):
                self._vol.download(stream, start, length, 0)
                stream.recvAll(collect, None)
                stream.finish()
            self._cache[index] = b"".join(chunks)
        return self._cache[index]

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            block = self._block(self._pos // _BLOCK)
            offset = self._pos % _BLOCK
            piece = block[offset : offset + len(view) - done]
            if not piece:
                break
            view[done : done + len(piece)] = piece
            done += len(piece)
            self._pos += len(piece)
        return done


@contextlib.contextmanager
def open_iso_file(conn: Connection, path: str) -> Iterator[BinaryIO]:
    """The ISO at ``path`` on the VM's host: read directly when local, else via its volume."""
    if is_local(conn.uri) and os.access(path, os.R_OK):
        with open(path, "rb") as handle:
            yield handle
        return
    vol = find_volume_by_path(conn, path)
    if vol is None:
        raise NotFound(
            f"ISO {path!r} is not a volume of any pool on the host",
            hint="import it with 'kvmgr iso import' so kvmgr can read it remotely",
        )
    reader = VolumeReader(conn, vol)
    yield io.BufferedReader(reader, buffer_size=64 * 1024)


@dataclass
class InstallMedia:
    """What kvmgr read from an installation ISO."""

    descriptor: IsoDescriptor
    os_entry: OsEntry
    media: Media | None
    kernel: bytes
    initrd: bytes
    kernel_path: str
    initrd_path: str
    has_packages: bool


def read_install_media(conn: Connection, iso_path: str, os_id: str = "auto") -> InstallMedia:
    """Detect the OS on the ISO and read its installer kernel and initrd."""
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    with open_iso_file(conn, iso_path) as handle:
        descriptor = parse_descriptor_set(iso_path, handle.read(_HEADER_BYTES))
        os_entry, media_list = _identify(descriptor, os_id)
        iso = pycdlib.PyCdlib()
        try:
            handle.seek(0)
            iso.open_fp(handle)
            treeinfo = _read(iso, ".treeinfo")
            has_packages = any(
                _exists(iso, name) for name in ("BaseOS", "Packages", "repodata", "pool")
            )
            media = _pick_media(media_list, has_packages)
            kernel_path, initrd_path = _boot_paths(treeinfo, media)
            kernel, initrd = _read(iso, kernel_path), _read(iso, initrd_path)
        except PyCdlibException as err:
            raise InvalidInput(f"{iso_path} is not a readable ISO 9660 image: {err}") from err
        finally:
            with contextlib.suppress(PyCdlibException):
                iso.close()
    if kernel is None or initrd is None:
        raise NotFound(
            f"{iso_path} has no installer kernel/initrd at {kernel_path} and {initrd_path}",
            hint="is this an installation ISO (not a live image)?",
        )
    return InstallMedia(
        descriptor, os_entry, media, kernel, initrd, kernel_path, initrd_path, has_packages
    )


def identify_iso(
    conn: Connection, iso_path: str, os_id: str = "auto"
) -> tuple[IsoDescriptor, OsEntry, Media | None]:
    """The OS on the ISO from its volume descriptor alone (Windows media have no kernel to
    read: this is all a Windows install needs from them)."""
    with open_iso_file(conn, iso_path) as handle:
        descriptor = parse_descriptor_set(iso_path, handle.read(_HEADER_BYTES))
    os_entry, media_list = _identify(descriptor, os_id)
    return descriptor, os_entry, _pick_media(media_list, has_packages=True)


def _identify(descriptor: IsoDescriptor, os_id: str) -> tuple[OsEntry, list[Media]]:
    db = get_db()
    matches = db.match_media(descriptor)
    if os_id != "auto":
        entry = db.get(os_id)
        if entry is None:
            raise NotFound(f"OS {os_id!r} is not in osinfo-db", hint="'kvmgr iso os-list'")
        return entry, [m for m in entry.media if media_matches(descriptor, m)] or list(entry.media)
    if not matches:
        raise InvalidInput(
            f"osinfo-db does not know the media {descriptor.volume_id!r}",
            hint="give the OS with --os (an osinfo short id) or use --script with --os",
        )
    best = matches[0].os
    return best, [m for m in best.media if media_matches(descriptor, m)]


def _pick_media(candidates: list[Media], has_packages: bool) -> Media | None:
    """Rocky and Alma give DVD, minimal and boot ISOs one volume id: the ISO's own content
    (a package repository or not) tells a full DVD from the network-install boot ISO, so the
    kickstart installs from the CD instead of the internet."""
    x86 = [m for m in candidates if m.arch in ("x86_64", "all")] or candidates
    for media in x86:
        if ("netinst" in media.variants) != has_packages:
            return media
    return x86[0] if x86 else None


def _names(path: str) -> list[dict[str, str]]:
    path = "/" + path.lstrip("/")
    plain = "/".join(part.upper().replace("-", "_") for part in path.split("/"))
    return [{"rr_path": path}, {"joliet_path": path}, {"iso_path": plain + ";1"}]


def _read(iso: Any, path: str) -> bytes | None:
    from pycdlib.pycdlibexception import PyCdlibException

    for name in _names(path):
        out = io.BytesIO()
        try:
            iso.get_file_from_iso_fp(out, **name)
        except (PyCdlibException, KeyError):
            continue
        return out.getvalue()
    return None


def _exists(iso: Any, path: str) -> bool:
    from pycdlib.pycdlibexception import PyCdlibException

    for name in _names(path):
        key, value = next(iter(name.items()))
        if key == "iso_path":
            value = value.removesuffix(";1")
        try:
            iso.get_record(**{key: value})
        except (PyCdlibException, KeyError):
            continue
        return True
    return False


def _boot_paths(treeinfo: bytes | None, media: Media | None) -> tuple[str, str]:
    """``.treeinfo``'s [images-x86_64] paths, else osinfo-db's, else isolinux's usual ones."""
    if treeinfo:
        parser = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(configparser.Error, UnicodeDecodeError):
            parser.read_string(treeinfo.decode())
            if parser.has_option("images-x86_64", "kernel"):
                return parser["images-x86_64"]["kernel"], parser["images-x86_64"]["initrd"]
    if media is not None and media.kernel and media.initrd:
        return media.kernel, media.initrd
    return "isolinux/vmlinuz", "isolinux/initrd.img"


# ------------------------------------------------------------------ volumes from bytes
def upload_bytes(
    conn: Connection, pool_name: str, name: str, data: bytes, steps: Steps, *, fmt: str = "raw"
) -> str:
    """A new volume holding ``data`` (mode 0600: seeds and initrds carry password hashes)."""
    pool = ensure_pool(conn, pool_name)
    spec = StorageVolume()
    spec.name = name
    spec.capacity = len(data)
    spec.capacity_unit = "bytes"
    spec.allocation = 0
    spec.target_format = fmt
    spec.target_mode = "0600"
    # Used until the operation ends: no VM uses the new volume before the define, so a pool
    # delete --force would otherwise take it.
    steps.uses("pool", pool_name)
    steps.uses("volume", pool_name, name)
    steps.undo_with("volume.delete", pool=pool_name, name=name)
    with libvirt_errors(f"creating volume {name} in pool {pool_name}"):
        vol = pool.createXML(spec.to_xml(), 0)
        path: str | None = vol.path()
    if path is None:
        raise OperationFailed(f"volume {name} has no path")
    stream = conn.virconn.newStream(0)
    try:
        with libvirt_errors(f"uploading volume {name}"):
            vol.upload(stream, 0, len(data), 0)
            view = memoryview(data)
            while view:
                sent = stream.send(view[:_BLOCK].tobytes())
                view = view[sent:]
            stream.finish()
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise
    return path
