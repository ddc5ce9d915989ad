"""Copying files into and out of volumes through libvirt's sparse streams (upload, download):
holes stay holes, progress is reported, and the remote host needs nothing but libvirt."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import AlreadyExists, InvalidInput, libvirt_errors
from kvmgr.names import validate_name
from kvmgr.services.steps import Steps, owned_steps
from kvmgr.services.storage import (
    VolumeInfo,
    _lookup_volume,
    _refuse_if_used,
    _volume_exists,
    create_volume,
    undo_volume_args,
    volume_info,
)
from kvmgr.services.storage_pools import _active_pool
from kvmgr.units import format_size

#: Called with (bytes done, bytes total) as a transfer advances; holes count as done.
Progress = Callable[[int, int], None]


def _no_progress(_done: int, _total: int) -> None:
    """Default progress callback: report nothing."""


class _SparseFile:
    """A local file read or written through a libvirt sparse stream, counting progress.

    The stream callbacks follow libvirt-python's ``sparseSendAll``/``sparseRecvAll`` contract
    (see libvirt-python's examples/sparsestream.py).
    """

    def __init__(self, fd: int, total: int, progress: Progress) -> None:
        self.fd, self.total, self.done, self.progress = fd, total, 0, progress

    def _advance(self, count: int) -> None:
        self.done += count
        self.progress(self.done, self.total)

    # --- upload side
    def read(self, _stream: libvirt.virStream, nbytes: int, _opaque: object) -> bytes:
        data = os.read(self.fd, nbytes)
        self._advance(len(data))
        return data

    def hole(self, _stream: libvirt.virStream, _opaque: object) -> list[Any]:
        """[in_data, section_length] for the section at the current offset."""
        cur = os.lseek(self.fd, 0, os.SEEK_CUR)
        try:
            data = os.lseek(self.fd, cur, os.SEEK_DATA)
        except OSError as err:
            if err.errno != errno.ENXIO:
                raise
            data = -1  # only a trailing hole is left
        if data < 0:
            result = [False, os.lseek(self.fd, 0, os.SEEK_END) - cur]
        elif data > cur:
            result = [False, data - cur]
        else:
            result = [True, os.lseek(self.fd, data, os.SEEK_HOLE) - data]
        os.lseek(self.fd, cur, os.SEEK_SET)
        return result

    def skip(self, _stream: libvirt.virStream, length: int, _opaque: object) -> int:
        os.lseek(self.fd, length, os.SEEK_CUR)
        self._advance(length)
        return 0

    # --- download side
    def write(self, _stream: libvirt.virStream, buf: bytes, _opaque: object) -> int:
        written = os.write(self.fd, buf)
        self._advance(written)
        return written

    def punch(self, _stream: libvirt.virStream, length: int, _opaque: object) -> int:
        """A hole from the daemon: move on and extend the file, leaving the range unallocated."""
        end = os.lseek(self.fd, length, os.SEEK_CUR)
        os.ftruncate(self.fd, max(end, os.fstat(self.fd).st_size))
        self._advance(length)
        return 0


def detect_format(path: str) -> str:
    """qcow2 when the file starts with qcow2's magic, else raw."""
    with open(path, "rb") as handle:
        return "qcow2" if handle.read(4) == b"QFI\xfb" else "raw"


def upload_volume(
    conn: Connection,
    pool_name: str,
    name: str,
    source: str,
    *,
    progress: Progress = _no_progress,
    steps: Steps | None = None,
) -> VolumeInfo:
    """Copy a local file into volume ``name`` through a libvirt stream, keeping holes as holes.

    A missing volume is created with the file's size (and deleted again if the upload fails,
    journaled in ``steps``, so a killed process's next kvmgr deletes it too); an existing one
    must be large enough and not in use by a VM.
    """
    size = _source_size(source)
    pool = _active_pool(conn, pool_name)
    validate_name(name, what="volume name")
    with libvirt_errors(f"looking up volume {name}"):
        exists = _volume_exists(pool, name)
    if exists:  # overwritten in place: nothing to undo (the old bytes are gone as they go)
        vol = _lookup_volume(conn, pool_name, name)
        _refuse_if_used(conn, vol, "overwrite")
        _check_fits(vol, size, source)
        _send(conn, vol, source, size, progress)
    else:
        with owned_steps(conn, steps) as journal:
            journal.undo_with("volume.delete", **undo_volume_args(pool, name))
            # raw whatever the content: the bytes bring their own format, which the refresh
            # below makes libvirt detect (a qcow2 made by libvirt would be overwritten anyway)
            ref = create_volume(conn, pool_name, name, size, "raw")
            vol = _lookup_volume(conn, pool_name, ref.name)
            _send(conn, vol, source, size, progress)
    with libvirt_errors(f"refreshing pool {pool_name}"):
        pool.refresh(0)  # libvirt re-reads the format and allocation of what was written
    return volume_info(conn, pool_name, name)


def _source_size(source: str) -> int:
    try:
        info = os.stat(source)
    except OSError as err:
        raise InvalidInput(f"cannot read {source}: {err.strerror}") from err
    if stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"{source} is a directory", hint="give the path of a file to upload")
    if not os.access(source, os.R_OK):
        raise InvalidInput(f"cannot read {source}: permission denied")
    size = info.st_size
    if size == 0:
        raise InvalidInput(f"{source} is empty", hint="a volume needs at least one byte")
    return size


def _check_fits(vol: libvirt.virStorageVol, size: int, source: str) -> None:
    with libvirt_errors(f"reading volume {vol.name()}"):
        capacity = vol.info()[1]
    if size > capacity:
        raise InvalidInput(
            f"{source} ({format_size(size)}) is larger than volume {vol.name()!r} "
            f"({format_size(capacity)})",
            hint="resize the volume first, or upload to a new volume name",
        )


def _send(
    conn: Connection, vol: libvirt.virStorageVol, source: str, size: int, progress: Progress
) -> None:
    fd = os.open(source, os.O_RDONLY)
    try:
        stream = conn.virconn.newStream(0)
        sparse = _SparseFile(fd, size, progress)
        with libvirt_errors(f"uploading {source} to volume {vol.name()}"):
            vol.upload(stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            try:
                stream.sparseSendAll(sparse.read, sparse.hole, sparse.skip, None)
                stream.finish()
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise
    finally:
        os.close(fd)


def download_volume(
    conn: Connection,
    pool_name: str,
    name: str,
    target: str,
    *,
    overwrite: bool = False,
    progress: Progress = _no_progress,
) -> int:
    """Copy volume ``name`` into the local file ``target``; holes stay holes.  Returns bytes.

    The data goes to a temporary file next to ``target`` that is renamed only when complete, so
    a failed download leaves nothing behind and never half-overwrites an existing file.
    """
    vol = _lookup_volume(conn, pool_name, name)
    _check_target(target, overwrite)
    with libvirt_errors(f"reading volume {name}"):
        capacity = vol.info()[1]
    directory = os.path.dirname(os.path.abspath(target))
    try:
        fd, partial = tempfile.mkstemp(prefix=".kvmgr-download-", dir=directory)
    except OSError as err:
        raise InvalidInput(f"cannot write in {directory}: {err.strerror}") from err
    try:
        try:
            _receive(conn, vol, fd, capacity, progress)
        finally:
            os.close(fd)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return os.stat(target).st_size


def _check_target(target: str, overwrite: bool) -> None:
    """Refuse a download target that cannot become the file, before any data moves."""
    if os.path.isdir(target):
        raise InvalidInput(f"{target} is a directory", hint="give the path of the file to write")
    if os.path.exists(target) and not overwrite:
        raise AlreadyExists(f"{target} exists", hint="choose another file or add --force")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise InvalidInput(
            f"directory {directory} does not exist", hint="create it first or choose another path"
        )


def _receive(
    conn: Connection, vol: libvirt.virStorageVol, fd: int, capacity: int, progress: Progress
) -> None:
    stream = conn.virconn.newStream(0)
    sparse = _SparseFile(fd, capacity, progress)
    with libvirt_errors(f"downloading volume {vol.name()}"):
        vol.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
        try:
            stream.sparseRecvAll(sparse.write, sparse.punch, None)
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise
