"""Restoring a backup point into a VM: new qcow2 volumes streamed through libvirt, then a define.

Each disk is restored as a qcow2 v3 image that kvmgr lays out itself (:class:`Qcow2Layout`) and
sends through ``virStorageVol.upload``: one pass over the stored chunks, no scratch copy, and it
works on any host libvirt reaches.  Clusters are the repository's 64 KiB chunks; chunks never
stored stay unallocated (they read as zeros).  The restored image takes checkpoints, so the
restored VM's own backups are incremental again.

Nothing existing is overwritten: the VM name (``as_name``, or the original's when it is gone)
and every volume name must be free.  The original's UUID and MACs are kept only when the
original is gone; a restore beside it gets new ones.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import AlreadyExists, InvalidInput, NotFound, libvirt_errors
from kvmgr.names import validate_name
from kvmgr.services import storage, storage_pools, vms
from kvmgr.services.backup.repository import CHUNK, DiskMap, Repository, chunk_data
from kvmgr.services.inputs import use_definition
from kvmgr.services.steps import Steps, recovery_action
from kvmgr.xml.domain import Domain

_L2_ENTRIES = CHUNK // 8
_REFCOUNTS_PER_BLOCK = CHUNK // 2  # refcount_order 4: 16-bit refcounts
_COPIED = 1 << 63
#: Bytes per stream send: libvirt's stream messages carry up to 256 KiB (its legacy payload
#: limit, which every daemon accepts).
_SEND = 256 * 1024


@dataclass(frozen=True)
class Qcow2Layout:
    """Where everything of a qcow2 v3 image holding ``data`` chunks goes (cluster = chunk)."""

    capacity: int
    data: list[int]  # chunk numbers with data, ascending

    @property
    def l1_size(self) -> int:
        return max(1, -(-self.capacity // (_L2_ENTRIES * CHUNK)))

    @property
    def l2_tables(self) -> list[int]:
        return sorted({n // _L2_ENTRIES for n in self.data})

    def clusters(self) -> tuple[int, int, int, int]:
        """(refcount-table clusters, refcount blocks, L1 clusters, total clusters)."""
        l1 = -(-self.l1_size * 8 // CHUNK)
        fixed = 1 + l1 + len(self.l2_tables) + len(self.data)
        table = blocks = 1
        while True:
            total = fixed + table + blocks
            need_blocks = -(-total // _REFCOUNTS_PER_BLOCK)
            need_table = -(-need_blocks * 8 // CHUNK)
            if (need_blocks, need_table) == (blocks, table):
                return table, blocks, l1, total
            table, blocks = need_table, need_blocks

    def length(self) -> int:
        return self.clusters()[3] * CHUNK

    def metadata(self) -> Iterator[bytes]:
        """Header, refcount table and blocks, L1 and L2 tables: everything before the data."""
        table, blocks, l1, total = self.clusters()
        refcount_at = CHUNK
        blocks_at = refcount_at + table * CHUNK
        l1_at = blocks_at + blocks * CHUNK
        l2_at = l1_at + l1 * CHUNK
        data_at = l2_at + len(self.l2_tables) * CHUNK
        header = struct.pack(
            ">IIQIIQIIQQIIQQQQII",
            0x514649FB,  # "QFI\xfb"
            3,  # version
            0,  # backing file offset
            0,  # backing file size
            16,  # cluster bits: 64 KiB
            self.capacity,
            0,  # no encryption
            self.l1_size,
            l1_at,
            refcount_at,
            table,
            0,  # snapshots
            0,
            0,  # incompatible features
            0,  # compatible features
            0,  # autoclear features
            4,  # refcount order
            104,  # header length
        )
        yield header + bytes(CHUNK - len(header))  # an all-zero extension area ends the header
        yield _pad(b"".join(struct.pack(">Q", blocks_at + i * CHUNK) for i in range(blocks)), table)
        counts = struct.pack(">H", 1) * total
        yield _pad(counts, blocks)
        l2_of = {index: l2_at + i * CHUNK for i, index in enumerate(self.l2_tables)}
        l1_entries = [l2_of[i] | _COPIED if i in l2_of else 0 for i in range(self.l1_size)]
        yield _pad(struct.pack(f">{self.l1_size}Q", *l1_entries), l1)
        where = {n: data_at + i * CHUNK for i, n in enumerate(self.data)}
        for index in self.l2_tables:
            first = index * _L2_ENTRIES
            entries = [
                where[n] | _COPIED if n in where else 0 for n in range(first, first + _L2_ENTRIES)
            ]
            yield struct.pack(f">{_L2_ENTRIES}Q", *entries)


def _pad(data: bytes, clusters: int) -> bytes:
    return data + bytes(clusters * CHUNK - len(data))


def qcow2_stream(repo: Repository, chunks: DiskMap, capacity: int) -> Iterator[bytes]:
    """The bytes of a qcow2 image of the disk ``chunks`` describes, in file order."""
    layout = Qcow2Layout(capacity, sorted(chunks))
    yield from layout.metadata()
    fds: dict[str, int] = {}
    try:
        for number in layout.data:
            ref = chunks[number]
            if ref.pack not in fds:
                fds[ref.pack] = repo.open_pack(ref.pack)
            size = min(CHUNK, capacity - number * CHUNK)
            data = chunk_data(fds[ref.pack], ref, size)
            yield data if len(data) == CHUNK else data + bytes(CHUNK - len(data))
    finally:
        for fd in fds.values():
            os.close(fd)


# ------------------------------------------------------------------------------ restore
def restore_point(
    conn: Connection,
    repo: Repository,
    point: str,
    steps: Steps,
    *,
    as_name: str | None = None,
    pool: str = storage_pools.DEFAULT_POOL,
    start: bool = False,
) -> dict[str, Any]:
    """Restore ``point`` as VM ``as_name`` (default: the original's name, if it is gone)."""
    manifest = repo.manifest(point)
    original = manifest["vm"]
    name = as_name or original["name"]
    validate_name(name, what="VM name")
    if vms.exists(conn, name):
        raise AlreadyExists(
            f"VM {name!r} exists; a restore never overwrites a VM",
            hint="restore under a new name with --as NEW, or delete that VM first",
        )
    in_place = not _uuid_defined(conn, original["uuid"])
    spec = Domain.from_xml(original["xml"])
    spec.name = name
    if not in_place:
        spec.uuid = None
        for nic in spec.devices.interfaces:
            nic.mac = None  # libvirt gives new ones: two VMs must not share a MAC
    volumes = {disk["target"]: f"{name}-{disk['target']}.qcow2" for disk in manifest["disks"]}
    target_pool = storage_pools.ensure_pool(conn, pool)
    with libvirt_errors(f"looking up volumes in pool {pool}"):
        existing = {vol.name() for vol in target_pool.listAllVolumes(0)}
    taken = sorted(set(volumes.values()) & existing)
    if taken:
        raise AlreadyExists(
            f"volume {taken[0]!r} exists in pool {pool!r}; a restore never overwrites a volume",
            hint="restore under another name with --as NEW",
        )
    paths: dict[str, str] = {}
    for disk in manifest["disks"]:
        target = disk["target"]
        chunks = repo.disk_map(manifest, target)
        steps.progress(f"restoring disk {target}")
        steps.undo_with("backup.restore.volume.delete", pool=pool, name=volumes[target])
        paths[target] = _upload(conn, target_pool, volumes[target], repo, chunks, disk)
    for disk in spec.devices.disks:
        if disk.target_dev in paths:
            if disk.type != "file":
                disk.type = "file"
                disk.source_dev = None
                disk.source_pool = disk.source_volume = None
            disk.source_file = paths[disk.target_dev]
            disk.driver_type = "qcow2"
    metadata = spec.kvmgr_metadata(create=True)
    assert metadata is not None  # create=True
    metadata.owned_volumes = list(paths.values())
    steps.undo_with("backup.restore.undefine", name=name)
    use_definition(conn, steps, spec, require_networks=False)  # their deletes wait for us
    with libvirt_errors(f"defining restored VM {name}"):
        dom = conn.virconn.defineXML(spec.to_xml())
    if start:
        with libvirt_errors(f"starting restored VM {name}"):
            dom.create()
    with libvirt_errors(f"reading restored VM {name}"):
        uuid = dom.UUIDString()
    return {"name": name, "uuid": uuid, "point": point, "in_place": in_place, "disks": paths}


def _upload(
    conn: Connection,
    target_pool: libvirt.virStoragePool,
    volume: str,
    repo: Repository,
    chunks: DiskMap,
    disk: dict[str, Any],
) -> str:
    capacity = int(disk["capacity"])
    length = Qcow2Layout(capacity, sorted(chunks)).length()
    ref = storage.create_volume(conn, target_pool.name(), volume, length, "raw")
    with libvirt_errors(f"restoring disk {disk['target']} into volume {volume}"):
        vol = target_pool.storageVolLookupByName(ref.name)
        stream = conn.virconn.newStream(0)
        vol.upload(stream, 0, length, 0)
        try:
            # Each send is one message to libvirtd (and on to its I/O helper): sending chunks
            # in batches costs a copy here but a quarter of the messages and wake-ups there.
            batch = bytearray()
            for block in qcow2_stream(repo, chunks, capacity):
                batch += block
                if len(batch) >= _SEND:
                    _send_all(stream, bytes(batch))  # libvirt-python takes bytes only
                    batch.clear()
            if batch:
                _send_all(stream, bytes(batch))
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise
        target_pool.refresh(0)  # libvirt re-reads the volume and sees a qcow2 image
    return ref.path


def _send_all(stream: libvirt.virStream, data: bytes) -> None:
    offset = 0
    while offset < len(data):
        sent = stream.send(data[offset:] if offset else data)
        if sent <= 0:
            raise InvalidInput("the libvirt stream took no data")  # blocking streams never do
        offset += sent


def _uuid_defined(conn: Connection, uuid: str) -> bool:
    try:
        conn.virconn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise
    return True


@recovery_action("backup.restore.volume.delete")
def _delete_volume(conn: Connection, args: dict[str, Any]) -> None:
    with libvirt_errors(f"removing restored volume {args['name']}"):
        try:
            pool = conn.virconn.storagePoolLookupByName(args["pool"])
            vol = pool.storageVolLookupByName(args["name"])
        except libvirt.libvirtError as err:
            gone = (libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL)
            if err.get_error_code() in gone:
                return
            raise
        vol.delete(0)


@recovery_action("backup.restore.undefine")
def _undefine(conn: Connection, args: dict[str, Any]) -> None:
    with contextlib.suppress(NotFound):
        dom = vms.lookup(conn, args["name"])
        with libvirt_errors(f"removing restored VM {args['name']}"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
