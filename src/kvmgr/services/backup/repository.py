"""The on-disk backup repository: self-describing, so a bare directory is enough to restore.

Layout of a repository directory::

    kvmgr-backup-repo.json            format marker (version, chunk size)
    points/<point>/manifest.json      one backup point: VM definition, disks, chain, checksums
    points/<point>/<disk>.index       the disk's chunk map: one fixed-size record per stored chunk
    points/<point>/<disk>.pack        the chunks this point read, back to back (zstd where it pays)
    points/.<point>.partial/          a point being written; never listed, removed by recovery

Every point's index maps the *whole* disk: chunks a point did not read (an incremental's
unchanged blocks) point into the packs of earlier points.  So any point restores from its own
manifest alone, deleting a point never breaks another (its packs stay while referenced, see
:meth:`Repository.delete_point`), and "incremental forever" costs nothing at restore time.
Chunks never written are zeros; zero chunks are not stored (sparse).

A point exists once its directory is renamed from ``.<point>.partial`` to ``<point>``, after
everything in it was written and fsync'ed: a point is whole or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmgr.errors import AlreadyExists, InvalidInput, NotFound
from kvmgr.services.backup import compress

FORMAT = 1
MARKER = "kvmgr-backup-repo.json"
#: The chunk size matches QEMU's dirty-bitmap granularity for qcow2 (its 64 KiB cluster), so an
#: incremental reads exactly the clusters written since the last point.
CHUNK = 64 * 1024
ZERO_CHUNK = bytes(CHUNK)

#: chunk number, pack number (in the manifest's list), offset in the pack, stored length,
#: flags, sha256 of the chunk's raw bytes
_RECORD = struct.Struct(">IHQIB32s")
FLAG_ZSTD = 1
_IOV_MAX = 1024


@dataclass(frozen=True)
class ChunkRef:
    pack: str  # relative to points/
    offset: int
    length: int
    flags: int
    sha256: bytes


DiskMap = dict[int, ChunkRef]


@dataclass(frozen=True)
class Prepared:
    """A chunk ready to store: its raw size, sha256 (None: all zeros), stored bytes, flags."""

    size: int
    sha256: bytes | None
    data: bytes | bytearray | memoryview
    flags: int


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True for a chunk of zeros.  A memoryview compared with ``==`` goes byte by byte (about
    1 ms per zero chunk, against 25 us for a copy compared with memcmp); most chunks are not
    zero and differ at the first or last byte, so those are looked at first."""
    if not len(data) or data[0] or data[-1]:
        return not len(data)
    return bytes(data) == ZERO_CHUNK[: len(data)]


@dataclass
class DiskWriter:
    """Writes one disk of a new point: its chunks into a pack, its map into an index."""

    target: str
    capacity: int
    pack_name: str
    path: Path
    chunks: DiskMap = field(default_factory=dict)
    bytes_read: int = 0
    bytes_stored: int = 0
    chunks_read: int = 0
    _offset: int = 0
    payoff: compress.Payoff = field(default_factory=compress.Payoff)

    def __post_init__(self) -> None:
        self._pack = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed in close()

    def put(self, number: int, data: bytes | bytearray | memoryview) -> None:
        """Chunk ``number`` now holds ``data`` (a chunk's worth, or the disk's short tail)."""
        self.store(number, self.prepare(data))

    def prepare(self, data: bytes | bytearray | memoryview) -> Prepared:
        """Hash and (where it pays) compress a chunk: the CPU work, safe to run in threads."""
        if is_zero(data):
            return Prepared(len(data), None, b"", 0)
        digest = hashlib.sha256(data).digest()
        if self.payoff.should_try():
            packed = compress.compress(data)
            if self.payoff.judge(len(data), len(packed)):
                return Prepared(len(data), digest, packed, FLAG_ZSTD)
        return Prepared(len(data), digest, data, 0)

    def store(self, number: int, chunk: Prepared) -> None:
        """Append a prepared chunk to the pack (in the caller's order) and map it."""
        self.store_many([(number, chunk)])

    def store_many(self, chunks: list[tuple[int, Prepared]]) -> None:
        """Append prepared chunks in order with one ``writev`` (a run is up to 64 chunks)."""
        buffers: list[bytes | bytearray | memoryview] = []
        for number, chunk in chunks:
            self.bytes_read += chunk.size
            self.chunks_read += 1
            if chunk.sha256 is None:
                self.chunks.pop(number, None)  # zeros are never written
                continue
            stored = len(chunk.data)
            buffers.append(chunk.data)
            self.chunks[number] = ChunkRef(
                self.pack_name, self._offset, stored, chunk.flags, chunk.sha256
            )
            self._offset += stored
            self.bytes_stored += stored
        while buffers:
            written = os.writev(self._pack.fileno(), buffers[:_IOV_MAX])
            while buffers and written >= len(buffers[0]):
                written -= len(buffers.pop(0))
            if written:  # a short write inside a buffer: the rest of it goes next
                buffers[0] = memoryview(buffers[0])[written:]

    def close(self) -> None:
        os.fsync(self._pack.fileno())
        self._pack.close()


class Repository:
    """A backup repository directory (local, or a mounted NFS share)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        marker = self.path / MARKER
        try:
            meta = json.loads(marker.read_text())
        except FileNotFoundError:
            raise NotFound(
                f"{self.path} is not a kvmgr backup repository",
                hint=f"create one with 'kvmgr backup repo add NAME {self.path}'",
            ) from None
        except (OSError, ValueError) as err:
            raise InvalidInput(f"cannot read {marker}: {err}") from err
        if meta.get("format") != FORMAT or meta.get("chunk_size") != CHUNK:
            raise InvalidInput(f"{self.path} holds a backup repository of an unknown format")
        #: whether new chunks are compressed where it pays (reading handles either)
        self.compress = bool(meta.get("compress", True))
        self.points = self.path / "points"

    @classmethod
    def init(cls, path: str | Path, *, compress: bool = True) -> Repository:
        """Create a repository in ``path`` (empty or missing), or open the one already there.

        ``compress``: zstd where it pays (fewer bytes, more CPU time per backup).
        """
        root = Path(path)
        if not root.is_absolute():
            raise InvalidInput(f"repository path {path} is relative", hint="give an absolute path")
        if (root / MARKER).exists():
            return cls(root)
        if root.exists() and any(root.iterdir()):
            raise InvalidInput(
                f"{root} is not empty and not a backup repository",
                hint="give an empty or new directory",
            )
        (root / "points").mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)  # disk contents of VMs: readable by root only
        marker = root / MARKER
        meta = {"format": FORMAT, "chunk_size": CHUNK, "compress": compress}
        marker.write_text(json.dumps(meta) + "\n")
        return cls(root)

    # --------------------------------------------------------------------------- points
    def point_ids(self) -> list[str]:
        """Every complete point, oldest first (ids sort by time)."""
        if not self.points.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.points.iterdir()
            if not entry.name.startswith(".") and (entry / "manifest.json").is_file()
        )

    def manifest(self, point: str) -> dict[str, Any]:
        _check_point_id(point)
        path = self.points / point / "manifest.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFound(
                f"backup point {point!r} is not in {self.path}",
                hint="'kvmgr backup list' shows the points",
            ) from None
        return data

    def manifests(self) -> Iterator[dict[str, Any]]:
        for point in self.point_ids():
            with contextlib.suppress(NotFound, ValueError):
                yield self.manifest(point)

    def partial_dir(self, point: str) -> Path:
        _check_point_id(point)
        return self.points / f".{point}.partial"

    def begin(self, point: str) -> Path:
        """The directory a new point is written into until :meth:`commit`."""
        if (self.points / point).exists():
            raise AlreadyExists(f"backup point {point!r} exists already in {self.path}")
        partial = self.partial_dir(point)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        return partial

    def disk_writer(self, point: str, target: str, capacity: int) -> DiskWriter:
        _check_point_id(target)
        writer = DiskWriter(
            target, capacity, f"{point}/{target}.pack", self.partial_dir(point) / f"{target}.pack"
        )
        writer.payoff.enabled = self.compress
        return writer

    def commit(self, manifest: dict[str, Any], disks: list[DiskWriter]) -> None:
        """Write the indexes and the manifest, fsync them, and make the point exist (rename)."""
        point = str(manifest["id"])
        partial = self.partial_dir(point)
        packs: list[str] = []
        for writer in disks:
            for ref in writer.chunks.values():
                if ref.pack not in packs:
                    packs.append(ref.pack)
        manifest["packs"] = packs
        numbers = {name: number for number, name in enumerate(packs)}
        for writer, disk in zip(disks, manifest["disks"], strict=True):
            index = b"".join(
                _RECORD.pack(n, numbers[r.pack], r.offset, r.length, r.flags, r.sha256)
                for n, r in sorted(writer.chunks.items())
            )
            name = f"{writer.target}.index"
            _write_synced(partial / name, index)
            disk.update(
                index=f"{point}/{name}",
                index_sha256=hashlib.sha256(index).hexdigest(),
                chunks=len(writer.chunks),
                bytes_read=writer.bytes_read,
                bytes_stored=writer.bytes_stored,
                chunks_read=writer.chunks_read,
            )
        manifest["bytes_read"] = sum(w.bytes_read for w in disks)
        manifest["bytes_stored"] = sum(w.bytes_stored for w in disks)
        _write_synced(partial / "manifest.json", json.dumps(manifest, indent=1).encode())
        os.rename(partial, self.points / point)
        _fsync_dir(self.points)

    def discard(self, point: str) -> None:
        """Remove a point being written, or one committed by an operation that is undone."""
        shutil.rmtree(self.partial_dir(point), ignore_errors=True)
        final = self.points / point
        if final.exists():
            (final / "manifest.json").unlink(missing_ok=True)
            self.collect_garbage()

    def delete_point(self, point: str) -> None:
        """Forget a point; its packs go once no other point's map needs them."""
        self.manifest(point)  # NotFound with a hint when it is not there
        (self.points / point / "manifest.json").unlink()
        _fsync_dir(self.points / point)
        self.collect_garbage()

    def collect_garbage(self) -> list[str]:
        """Remove the files of deleted points that no remaining point references."""
        needed: set[str] = set()
        for manifest in self.manifests():
            needed.update(manifest.get("packs", []))
        removed: list[str] = []
        for entry in self.points.iterdir():
            if entry.name.startswith(".") or (entry / "manifest.json").exists():
                continue
            for item in list(entry.iterdir()):
                if f"{entry.name}/{item.name}" not in needed:
                    item.unlink()
                    removed.append(f"{entry.name}/{item.name}")
            if not any(entry.iterdir()):
                entry.rmdir()
        return removed

    # --------------------------------------------------------------------------- reading
    def disk_map(self, manifest: dict[str, Any], target: str) -> DiskMap:
        """The chunk map of disk ``target`` of a point; raises ValueError when it is damaged."""
        disk = _disk(manifest, target)
        raw = (self.points / disk["index"]).read_bytes()
        if hashlib.sha256(raw).hexdigest() != disk["index_sha256"]:
            raise ValueError(f"the chunk index of disk {target} does not match its checksum")
        packs: list[str] = manifest["packs"]
        chunks: DiskMap = {}
        for n, pack, offset, length, flags, digest in _RECORD.iter_unpack(raw):
            chunks[n] = ChunkRef(packs[pack], offset, length, flags, digest)
        return chunks

    def open_pack(self, pack: str) -> int:
        return os.open(self.points / pack, os.O_RDONLY)

    def pack_path(self, pack: str) -> Path:
        return self.points / pack


def chunk_data(fd: int, ref: ChunkRef, size: int) -> bytes:
    """The raw bytes of a stored chunk (``size``: a chunk, or less for a disk's tail)."""
    stored = os.pread(fd, ref.length, ref.offset)
    if len(stored) != ref.length:
        raise ValueError("a pack file is shorter than its index says")
    if ref.flags & FLAG_ZSTD:
        return compress.decompress(stored, size)
    return stored


def _disk(manifest: dict[str, Any], target: str) -> dict[str, Any]:
    for disk in manifest["disks"]:
        if disk["target"] == target:
            return dict(disk)
    raise NotFound(f"backup point {manifest['id']} has no disk {target}")


def _check_point_id(point: str) -> None:
    """Ids become path components: refuse anything that could leave the repository."""
    if not point or "/" in point or point.startswith(".") or "\0" in point:
        raise InvalidInput(f"{point!r} is not a backup point id", hint="'kvmgr backup list'")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
