"""Taking a backup point of a VM: libvirt's pull-mode backup, checkpoints for incrementals.

Why pull mode (``virDomainBackupBegin`` with ``mode='pull'``) and not push mode: in pull mode
QEMU exports the point-in-time view of each disk over NBD *with* its block status, both
``base:allocation`` (so zeros and holes are never read or stored) and the checkpoint's dirty
bitmap (so an incremental reads exactly the clusters written since the last point).  kvmgr reads
that export itself (:mod:`.nbd`), hashes and compresses each chunk on the way, and writes the
repository's own format, which carries a checksum per chunk.  Push mode would make QEMU write a
qcow2 file that kvmgr must then re-read to checksum and would need ``qemu-img map`` to tell an
incremental's unchanged clusters from changed ones.

A shut-off VM is started *paused* for the backup (no guest code runs), which gives the same
export through libvirt alone and keeps the checkpoints' persistent bitmaps in step; it is
stopped again afterwards.

Where the export listens is :mod:`.export`'s business: a UNIX socket for a VM on this machine,
TCP with TLS for one on another host.

Everything the backup makes (the scratch directory with QEMU's NBD socket and scratch files, or
the scratch files beside a remote VM's disks, the paused start, the backup job, the new
checkpoint, the partial point) is journalled through
:class:`~kvmgr.services.steps.Steps` before it is made, so a process killed half way leaves
nothing after recovery: no job, no checkpoint without a point, no half point.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import libvirt
from lxml import etree

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, InvalidState, KvmgrError, OperationFailed, libvirt_errors
from kvmgr.services import vms
from kvmgr.services.backup import export, nbd
from kvmgr.services.backup.repository import CHUNK, DiskMap, DiskWriter, Prepared, Repository
from kvmgr.services.steps import Steps, recovery_action
from kvmgr.xml.domain import Domain

#: Chunks per NBD read request (4 MiB): large enough to amortise a request, small enough to
#: pipeline several.
_RUN = 64
#: Threads hashing and compressing chunks, and how many reads (of up to _RUN chunks each, so
#: 16 MiB) may wait for them.
_WORKERS = 2
_IN_FLIGHT = 4
#: Batches of chunks (about a 4 MiB read each) waiting for the pack writer.
_WRITES_QUEUED = 8
CHECKPOINT_PREFIX = "kvmgr-"


@dataclass(frozen=True)
class BackupDisk:
    target: str
    source: str
    format: str


def backup_disks(spec: Domain) -> list[BackupDisk]:
    """The disks a backup copies: writable disks with a host path (CD-ROMs and read-only skip)."""
    disks = []
    for disk in spec.devices.disks:
        if disk.device not in (None, "disk") or disk.readonly or disk.shareable:
            continue
        path = disk.source_path
        if not path or not disk.target_dev:
            continue
        disks.append(BackupDisk(disk.target_dev, path, disk.driver_type or "raw"))
    return disks


def new_point_id(vm: str, repo: Repository, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    base = f"{vm}.{stamp}"
    point, serial = base, 1
    while (repo.points / point).exists() or repo.partial_dir(point).exists():
        serial += 1
        point = f"{base}.{serial}"
    return point


@dataclass
class _Run:
    """What one backup run decided and made, as the steps after the job starts need it."""

    name: str
    uuid: str
    xml: str
    offline: bool
    disks: list[BackupDisk]
    capacities: dict[str, int]
    parent: dict[str, Any] | None
    point: str
    checkpoint: str | None
    export: export.Export
    scratch: str = ""  # the local scratch directory (socket, scratch files); "" for a remote
    port: int = 0  # a remote export's TCP port, once the job runs
    consistency: str = "crash"

    @property
    def sock(self) -> str:
        return f"{self.scratch}/nbd.sock" if self.scratch else ""

    def scratch_file(self, disk: BackupDisk) -> str:
        return export.scratch_file(self.export, self.scratch, self.point, disk.target, disk.source)


def create_backup(
    conn: Connection,
    repo: Repository,
    name: str,
    steps: Steps,
    *,
    full: bool = False,
    quiesce: bool = False,
    host: str = "local",
    scratch_root: str = "/var/tmp",  # noqa: S108 - a private mkdtemp below, on disk not tmpfs
) -> dict[str, Any]:
    """Back up VM ``name`` into ``repo``; returns the new point's manifest.

    The first point of a VM (or with ``full``, or when the chain is broken) is full; later ones
    read only what changed since the previous point's checkpoint.
    """
    started = time.monotonic()
    dom = vms.lookup(conn, name)
    run = _plan(conn, dom, repo, name, full=full)
    if run.export.local:
        run.scratch = tempfile.mkdtemp(prefix=export.SCRATCH_PREFIX, dir=scratch_root)
        steps.undo_with("backup.scratch.remove", path=run.scratch)
    else:
        # libvirt removes them when the job ends; the journal covers a daemon that died first.
        steps.undo_with("backup.scratch.files.remove", paths=_scratch_files(run))
    steps.undo_with("backup.point.discard", repo=str(repo.path), point=run.point)
    repo.begin(run.point)
    if run.offline:
        steps.progress(f"starting {name} paused: it is shut off")
        steps.undo_with("backup.vm.stop_paused", uuid=run.uuid)
        with libvirt_errors(f"starting VM {name} paused for its backup"):
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    if run.export.local:
        export.give_to_qemu(dom, run.scratch)
    _begin_job(dom, run, steps, quiesce=quiesce)
    writers = _copy_disks(dom, repo, run, steps)
    manifest: dict[str, Any] = {
        "format": 1,
        "id": run.point,
        "vm": {"name": name, "uuid": run.uuid, "xml": run.xml},
        "host": host,
        "export": "unix" if run.export.local else "tls",
        "kind": "incremental" if run.parent else "full",
        "parent": run.parent["id"] if run.parent else None,
        "checkpoint": run.checkpoint,
        "tracking": run.checkpoint is not None,
        "consistency": run.consistency,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration": round(time.monotonic() - started, 3),
        "disks": [
            {"target": d.target, "source": d.source, "format": d.format, "capacity": w.capacity}
            for d, w in zip(run.disks, writers, strict=True)
        ],
    }
    repo.commit(manifest, writers)
    _finish(conn, dom, run, steps)
    manifest["duration"] = round(time.monotonic() - started, 3)
    return manifest


def _plan(
    conn: Connection, dom: libvirt.virDomain, repo: Repository, name: str, *, full: bool
) -> _Run:
    with libvirt_errors(f"reading VM {name}"):
        uuid = dom.UUIDString()
        state = vms.state_of(dom)
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    offline = state == libvirt.VIR_DOMAIN_SHUTOFF
    if not offline and state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
        raise InvalidState(
            f"VM {name} is neither running, paused nor shut off",
            hint="start or shut it down, then back it up",
        )
    where = export.plan(conn)  # before anything is made: a refused transport leaves nothing
    disks = backup_disks(Domain.from_xml(xml))
    if not disks:
        raise InvalidInput(f"VM {name} has no disk to back up", hint="CD-ROMs are not backed up")
    # Dirty bitmaps live in qcow2 images only: a VM with a raw disk is backed up in full.
    tracking = all(disk.format == "qcow2" for disk in disks)
    capacities = {d.target: _capacity(dom, d) for d in disks}
    parent = None if full or not tracking else _parent(dom, repo, uuid, capacities)
    point = new_point_id(name, repo)
    checkpoint = f"{CHECKPOINT_PREFIX}{point}" if tracking else None
    return _Run(name, uuid, xml, offline, disks, capacities, parent, point, checkpoint, where)


def _begin_job(dom: libvirt.virDomain, run: _Run, steps: Steps, *, quiesce: bool) -> None:
    if run.checkpoint:
        steps.undo_with("backup.checkpoint.delete", uuid=run.uuid, name=run.checkpoint)
    steps.undo_with("backup.job.abort", uuid=run.uuid)
    run.consistency = "offline" if run.offline else "crash"
    if quiesce and not run.offline:
        steps.undo_with("backup.thaw", uuid=run.uuid)
        run.consistency = "application" if _freeze(dom) else "crash"
    incremental = run.parent["checkpoint"] if run.parent else None
    try:
        for port in [0] if run.export.local else export.ports(run.uuid):
            try:
                with libvirt_errors(f"starting the backup job of VM {run.name}"):
                    dom.backupBegin(
                        _backup_xml(run, port, incremental),
                        _checkpoint_xml(run.checkpoint, run.disks) if run.checkpoint else None,
                        0,
                    )
            except KvmgrError as err:
                # Another export (of a concurrent backup, or anything else) holds the port:
                # libvirt rolled this attempt back, so the next port starts clean.
                if run.export.local or not export.port_taken(err):
                    raise
                continue
            run.port = port
            break
        else:
            raise OperationFailed(
                f"no TCP port in {export.PORTS.start}-{export.PORTS.stop - 1} is free on the "
                f"host of VM {run.name} for its backup export",
                hint="too many backups run there at once; retry later",
            )
    finally:
        if run.consistency == "application":
            with contextlib.suppress(libvirt.libvirtError):
                dom.fsThaw(None, 0)


def _copy_disks(
    dom: libvirt.virDomain, repo: Repository, run: _Run, steps: Steps
) -> list[DiskWriter]:
    exports = _exports(dom)
    writers: list[DiskWriter] = []
    for disk in run.disks:
        writer = repo.disk_writer(run.point, disk.target, run.capacities[disk.target])
        writers.append(writer)
        try:
            base = repo.disk_map(run.parent, disk.target) if run.parent else None
            name, bitmap = exports[disk.target]
            _copy_disk(run, name, bitmap if base is not None else None, writer, base, steps)
        finally:
            writer.close()
    return writers


def _finish(conn: Connection, dom: libvirt.virDomain, run: _Run, steps: Steps) -> None:
    """The point exists: from here recovery rolls forward, never removing it or its checkpoint.

    It ends the job, drops the VM's older kvmgr checkpoints (the new one tracks changes from
    now on; each kept one would cost a bitmap update on every guest write), stops the VM
    started paused and removes the scratch directory.
    """
    with libvirt_errors(f"listing the checkpoints of VM {run.name}"):
        old = [
            cp.getName()
            for cp in dom.listAllCheckpoints(0)
            if cp.getName().startswith(CHECKPOINT_PREFIX) and cp.getName() != run.checkpoint
        ]
    steps.finish_with("backup.job.abort", uuid=run.uuid)
    for name in old:
        steps.finish_with("backup.checkpoint.delete", uuid=run.uuid, name=name)
    if run.offline:
        steps.finish_with("backup.vm.stop_paused", uuid=run.uuid)
    if run.export.local:
        steps.finish_with("backup.scratch.remove", path=run.scratch)
    else:
        steps.finish_with("backup.scratch.files.remove", paths=_scratch_files(run))
    _end_job(conn, {"uuid": run.uuid})
    for name in old:
        _delete_checkpoint(conn, {"uuid": run.uuid, "name": name})
    if run.offline:
        _stop_paused(conn, {"uuid": run.uuid})
    if run.export.local:
        export.remove_scratch_dir(conn, {"path": run.scratch})
    # A remote job's scratch files went with the job: libvirt unlinks them when it ends.


def _scratch_files(run: _Run) -> list[str]:
    return [run.scratch_file(disk) for disk in run.disks]


# ------------------------------------------------------------------------------ choosing
def _parent(
    dom: libvirt.virDomain, repo: Repository, uuid: str, capacities: dict[str, int]
) -> dict[str, Any] | None:
    """The point an incremental builds on: the VM's latest, if libvirt still has its checkpoint.

    Anything else (no point, the point deleted, the checkpoint gone, disks added or resized)
    breaks the chain, and the backup is full.
    """
    latest = None
    for manifest in repo.manifests():
        if manifest["vm"]["uuid"] == uuid:
            latest = manifest
    if latest is None or not latest.get("checkpoint"):
        return None
    if {d["target"]: d["capacity"] for d in latest["disks"]} != capacities:
        return None
    with libvirt_errors(f"listing the checkpoints of VM {dom.name()}"):
        names = {cp.getName() for cp in dom.listAllCheckpoints(0)}
    return latest if latest["checkpoint"] in names else None


def _capacity(dom: libvirt.virDomain, disk: BackupDisk) -> int:
    """The disk's virtual size; libvirt reads it from the image when the VM is shut off."""
    with libvirt_errors(f"reading the size of disk {disk.target}"):
        return int(dom.blockInfo(disk.target, 0)[0])


# ------------------------------------------------------------------------------ libvirt XML
def _backup_xml(run: _Run, port: int, incremental: str | None) -> str:
    root = etree.Element("domainbackup", mode="pull")
    if incremental:
        etree.SubElement(root, "incremental").text = incremental
    export.server_element(root, run.export, run.sock, port)
    listed = etree.SubElement(root, "disks")
    for disk in run.disks:
        item = etree.SubElement(listed, "disk", name=disk.target, backup="yes", type="file")
        etree.SubElement(item, "scratch", file=run.scratch_file(disk))
    return etree.tostring(root, encoding="unicode")


def _checkpoint_xml(name: str, disks: list[BackupDisk]) -> str:
    root = etree.Element("domaincheckpoint")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "description").text = "kvmgr backup point (kvmgr backup list)"
    listed = etree.SubElement(root, "disks")
    for disk in disks:
        etree.SubElement(listed, "disk", name=disk.target, checkpoint="bitmap")
    return etree.tostring(root, encoding="unicode")


def _exports(dom: libvirt.virDomain) -> dict[str, tuple[str, str | None]]:
    """Per disk target: its NBD export name and, for an incremental, its dirty bitmap."""
    with libvirt_errors(f"reading the backup job of VM {dom.name()}"):
        root = etree.fromstring(dom.backupGetXMLDesc(0).encode())
    found: dict[str, tuple[str, str | None]] = {}
    for disk in root.iterfind("./disks/disk[@backup='yes']"):
        target = str(disk.get("name"))
        found[target] = (str(disk.get("exportname") or target), disk.get("exportbitmap"))
    return found


def _freeze(dom: libvirt.virDomain) -> bool:
    """Freeze the guest's file systems through its agent; False (crash-consistent) without one."""
    try:
        dom.fsFreeze(None, 0)
    except libvirt.libvirtError:
        return False
    return True


# ------------------------------------------------------------------------------ copying
def _copy_disk(
    run: _Run,
    name: str,
    bitmap: str | None,
    writer: DiskWriter,
    base: DiskMap | None,
    steps: Steps,
) -> None:
    """Read a disk's export into ``writer``: allocated chunks, or the dirty ones on ``base``."""
    dirty = f"qemu:dirty-bitmap:{bitmap}" if bitmap else None
    contexts = [nbd.ALLOCATION] + ([dirty] if dirty else [])
    with export.connected(run.export, run.sock, run.port, name, contexts) as client:
        if base is not None and dirty:
            writer.chunks = dict(base)
            wanted = [e for e in client.extents(dirty) if e.flags & nbd.STATE_DIRTY]
        else:
            wanted = [e for e in client.extents(nbd.ALLOCATION) if not e.flags & nbd.STATE_ZERO]
        runs = list(_runs(wanted, client.size))
        total = sum(length for _, length in runs) or 1
        done = 0
        # Hashing and compressing (both release the GIL) run in threads, a whole read per task
        # (a task per chunk cost a future and two thread hand-offs per 64 KiB, which on a busy
        # machine took more CPU than the hashing), and one more thread appends finished chunks
        # to the pack in disk order, while this one keeps QEMU's NBD server busy.
        pending: deque[Future[list[tuple[int, Prepared]]]] = deque()
        writes: deque[Future[None]] = deque()
        with (
            ThreadPoolExecutor(max_workers=_WORKERS) as pool,
            ThreadPoolExecutor(max_workers=1) as disk,
        ):
            for (offset, length), data in zip(runs, client.read_many(runs), strict=True):
                pending.append(pool.submit(_prepare_run, writer, offset, memoryview(data), length))
                while len(pending) > _IN_FLIGHT or (pending and pending[0].done()):
                    writes.append(disk.submit(writer.store_many, pending.popleft().result()))
                while len(writes) > _WRITES_QUEUED or (writes and writes[0].done()):
                    writes.popleft().result()
                done += length
                steps.progress(f"disk {writer.target}: {done * 100 // total}%", done * 100 // total)
            for prepared in pending:
                writes.append(disk.submit(writer.store_many, prepared.result()))
            for write in writes:
                write.result()


def _prepare_run(
    writer: DiskWriter, offset: int, view: memoryview, length: int
) -> list[tuple[int, Prepared]]:
    """Hash and compress the chunks of one read (in a worker thread)."""
    first = offset // CHUNK
    return [
        (first + index, writer.prepare(view[at : at + CHUNK]))
        for index, at in enumerate(range(0, length, CHUNK))
    ]


def _runs(extents: list[nbd.Extent], size: int) -> Iterator[tuple[int, int]]:
    """Chunk-aligned ``(offset, length)`` reads covering ``extents``, merged, <= _RUN chunks."""
    start = end = -1
    for extent in extents:
        first = extent.offset // CHUNK
        last = -(-(extent.offset + extent.length) // CHUNK)
        if first <= end:
            end = max(end, last)
            continue
        if end > start:
            yield from _split(start, end, size)
        start, end = first, last
    if end > start:
        yield from _split(start, end, size)


def _split(first: int, last: int, size: int) -> Iterator[tuple[int, int]]:
    for chunk in range(first, last, _RUN):
        offset = chunk * CHUNK
        yield offset, min(min(last, chunk + _RUN) * CHUNK, size) - offset


# ------------------------------------------------------------------------------ recovery
def _domain(conn: Connection, uuid: str) -> libvirt.virDomain | None:
    try:
        return conn.virconn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


@recovery_action("backup.job.abort")
def _end_job(conn: Connection, args: dict[str, Any]) -> None:
    """End the VM's backup job if one runs (pull mode ends by abort; its scratch files go)."""
    with libvirt_errors("ending a backup job"):
        dom = _domain(conn, args["uuid"])
        if dom is None or not dom.isActive():
            return
        stats = dom.jobStats(0)
        if stats.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP:
            with contextlib.suppress(libvirt.libvirtError):  # it may end by itself meanwhile
                dom.abortJob()


@recovery_action("backup.checkpoint.delete")
def _delete_checkpoint(conn: Connection, args: dict[str, Any]) -> None:
    """Delete a checkpoint (libvirt merges its bitmap into its parent's, so tracking holds)."""
    with libvirt_errors(f"deleting checkpoint {args['name']}"):
        dom = _domain(conn, args["uuid"])
        if dom is None:
            return
        try:
            checkpoint = dom.checkpointLookupByName(args["name"], 0)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                return
            raise
        checkpoint.delete(0)


@recovery_action("backup.vm.stop_paused")
def _stop_paused(conn: Connection, args: dict[str, Any]) -> None:
    """Stop the VM a backup started paused (a VM someone resumed meanwhile is left running)."""
    with libvirt_errors("stopping a VM started for its backup"):
        dom = _domain(conn, args["uuid"])
        if dom is None or not dom.isActive():
            return
        if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.destroy()


@recovery_action("backup.thaw")
def _thaw(conn: Connection, args: dict[str, Any]) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        dom = _domain(conn, args["uuid"])
        if dom is not None and dom.isActive():
            dom.fsThaw(None, 0)


@recovery_action("backup.point.discard")
def _discard_point(_conn: Connection, args: dict[str, Any]) -> None:
    with contextlib.suppress(KvmgrError):  # a repository that went away holds no half point
        Repository(args["repo"]).discard(args["point"])
