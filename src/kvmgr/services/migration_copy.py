"""Copying a volume between two hosts through libvirt storage streams, and checking the copy.

Used by offline migration (every disk) and by a live one for the read-only images under a disk
(a snapshot chain's frozen layers, a template base the destination lacks): holes travel as holes
(sparse streams), and :func:`digest` reads a volume back the same way on either host so the two
sides can be compared by size and SHA-256 without a shell on either.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import InvalidState, KvmgrError, OperationFailed, libvirt_errors
from kvmgr.units import MIB

_CHUNK = 4 * MIB


def copy_volume(
    src: Connection,
    dst: Connection,
    source: libvirt.virStorageVol,
    target: libvirt.virStorageVol,
    cancel: threading.Event,
) -> None:
    """Stream ``source``'s file into ``target``, holes as holes."""
    down = src.virconn.newStream(0)
    up = dst.virconn.newStream(0)
    try:
        with libvirt_errors(f"copying volume {source.path()}"):
            source.download(down, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
            target.upload(up, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)

            def data(_stream: libvirt.virStream, chunk: bytes, _opaque: object) -> int:
                if cancel.is_set():
                    return -1
                view = memoryview(chunk)
                while view:
                    sent = up.send(view.tobytes())
                    view = view[sent:]
                return len(chunk)

            def hole(_stream: libvirt.virStream, length: int, _opaque: object) -> int:
                up.sendHole(length, 0)
                return 0

            down.sparseRecvAll(data, hole, None)
            down.finish()
            up.finish()
    except (KvmgrError, libvirt.libvirtError):
        for stream in (down, up):
            with contextlib.suppress(libvirt.libvirtError):  # finished or broken already
                stream.abort()
        if cancel.is_set():
            raise InvalidState("the copy was cancelled; the VM stays on the source") from None
        raise


def digest(conn: Connection, vol: libvirt.virStorageVol) -> tuple[int, str]:
    """Length and SHA-256 of a volume's file as libvirt streams it (holes read as zeros)."""
    digest = hashlib.sha256()
    length = 0
    zeros = bytes(_CHUNK)
    stream = conn.virconn.newStream(0)
    with libvirt_errors(f"reading volume {vol.path()}"):
        vol.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)

        def data(_stream: libvirt.virStream, chunk: bytes, _opaque: object) -> int:
            nonlocal length
            digest.update(chunk)
            length += len(chunk)
            return len(chunk)

        def hole(_stream: libvirt.virStream, size: int, _opaque: object) -> int:
            nonlocal length
            length += size
            while size:
                step = min(size, _CHUNK)
                digest.update(zeros[:step])
                size -= step
            return 0

        stream.sparseRecvAll(data, hole, None)
        stream.finish()
    return length, digest.hexdigest()


def copy_checked(
    src: Connection,
    dst: Connection,
    source: libvirt.virStorageVol,
    target: libvirt.virStorageVol,
    cancel: threading.Event,
    what: str,
) -> str:
    """Copy ``source`` into ``target``, read both back and compare; the line for the report."""
    copy_volume(src, dst, source, target, cancel)
    return compare(src, dst, source, target, what)


def compare(
    src: Connection,
    dst: Connection,
    source: libvirt.virStorageVol,
    target: libvirt.virStorageVol,
    what: str,
) -> str:
    """Refuse when ``target`` differs from ``source``; else the line for the report."""
    ours, theirs = digest(src, source), digest(dst, target)
    if ours != theirs:
        raise OperationFailed(
            f"the copy of {what} differs from the source ({ours[0]} bytes sha256 "
            f"{ours[1][:12]}… against {theirs[0]} bytes {theirs[1][:12]}…); nothing was moved"
        )
    return f"{what}: {ours[0]} bytes, sha256 {ours[1]}"
