"""Moving a VM to another host: live with its local disks copied, or offline.

Live (:func:`migrate` on a running VM): the destination's volumes are made first in the pools of
the same names (libvirt's storage API, sparse, flattened for linked clones), then one
``virDomainMigrate3`` call with ``LIVE | PERSIST_DEST | UNDEFINE_SOURCE | NON_SHARED_DISK``
(QEMU mirrors each disk over NBD with synchronous writes, so the mirror converges, then pre-copies
memory with auto-converge) while this thread reads the job's statistics for progress, raises the
allowed downtime step by step when memory does not converge, and aborts the job on a cancel
request or Ctrl-C: the VM then runs on the source, unchanged, and the destination's volumes go.

Offline (a shut-off VM): each disk is copied through two storage streams (sparse: holes are sent
as holes), both copies are read back and compared (size and SHA-256), then libvirt's offline
migration moves the definition and undefines the source.

Two journals, one per host, because recovery actions run on one host's connection:
``dest_steps`` (undo: remove the volumes made on the destination) and ``source_steps`` (finish:
remove the source's volumes).  Both actions remove a volume only while no VM of that host uses it,
so whatever point a process is killed at, recovery never removes a disk a VM still has: before the
switch the source VM holds its disks, after it the destination VM holds the new ones.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import InvalidState, libvirt_errors, translate
from kvmgr.services import migration_snapshots as snapshot_moves
from kvmgr.services import storage
from kvmgr.services.inputs import use_definition
from kvmgr.services.migration_checks import Preflight, preflight
from kvmgr.services.migration_copy import compare, copy_volume
from kvmgr.services.steps import LocalSteps, Steps, recovery_action
from kvmgr.xml.domain import Domain

POLL_INTERVAL = 0.5  # how soon a cancel request is acted on
#: How often the job's statistics are read.  Each read is a libvirt query job that the
#: migration's own monitor calls wait behind; read every 0.5 s they made a 2 GiB move ~40 %
#: slower on the lab (9.8 s against 13.8-14.8 s, bench/migrate.py's guest, in-process).
STATS_INTERVAL = 2.0
#: Downtime QEMU may take for the switch-over, start and ceiling of the step-by-step raise (ms).
DOWNTIME_START_MS = 300
DOWNTIME_CEILING_MS = 5000
#: Memory passes after which the allowed downtime doubles (the dirty rate outruns the copy).
PASSES_PER_RAISE = 3
#: How long removing a volume waits for a finished move's incoming VM to go (seconds).
TRANSIENT_WAIT = 30.0


@dataclass(frozen=True)
class MigrateOptions:
    offline: bool | None = None  # None: live when running, offline when shut off
    max_downtime_ms: int | None = None  # None: start at DOWNTIME_START_MS and raise it
    bandwidth_mib: int | None = None
    parallel: int | None = None
    postcopy: bool = False
    dest_address: str | None = None  # where the destination's QEMU listens (tcp://ADDR)


@dataclass(frozen=True)
class Progress:
    """One sample of the migration job (bytes; rates in bytes/s)."""

    phase: str  # disks, memory, switch-over, copying <disk>, verifying, done
    elapsed: float
    disk_done: int = 0
    disk_total: int = 0
    memory_done: int = 0
    memory_total: int = 0
    memory_remaining: int = 0
    rate: float = 0.0
    passes: int = 0
    downtime_ms: int | None = None

    @property
    def eta(self) -> float | None:
        left = (self.disk_total - self.disk_done) + self.memory_remaining
        return left / self.rate if self.rate > 0 else None


@dataclass
class MigrationResult:
    name: str
    mode: str
    seconds: float
    downtime_ms: int | None
    data_bytes: int
    removed_on_source: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # offline: disks verified by checksum
    paths: dict[str, str] = field(default_factory=dict)  # source path -> path on the destination
    memory_sent: int | None = None  # live: memory bytes sent (the destination's job stats)
    snapshots: list[str] = field(default_factory=list)  # moved and redefined on the destination
    #: live: each allowed downtime set, in order (ms; the first is the start, then the raises).
    downtime_steps: list[int] = field(default_factory=list)
    #: live: the source said its VM paused for post-copy (the switch happened), and how many
    #: memory passes pre-copy made (the destination's record of the job).
    postcopy: bool = False
    memory_passes: int | None = None


# ------------------------------------------------------------------------------ recovery actions
@recovery_action("migrate.remove_unused_volume")
def _remove_unused_volume(conn: Connection, args: dict[str, Any]) -> None:
    """Delete volume ``name`` of ``pool`` unless a VM (or an overlay) of this host uses it."""
    remove_if_unused(conn, str(args["pool"]), str(args["name"]))


def remove_if_unused(conn: Connection, pool: str, name: str) -> bool:
    """Delete ``pool``/``name`` unless something of this host uses it; True when deleted."""
    try:
        vol = conn.virconn.storagePoolLookupByName(pool).storageVolLookupByName(name)
        path = vol.path()
    except libvirt.libvirtError as err:
        if err.get_error_code() in (
            libvirt.VIR_ERR_NO_STORAGE_VOL,
            libvirt.VIR_ERR_NO_STORAGE_POOL,
        ):
            return False  # never made, or removed already
        raise translate(err, f"looking up volume {name}") from err
    if _transient_users(conn, path, wait=TRANSIENT_WAIT):
        # Only the incoming VM of a move that ended holds it, and libvirt did not drop that VM
        # in time: fail, so the journal keeps the record and a later recovery tries again.
        raise InvalidState(
            f"volume {path} is still used by an incoming VM that libvirt has not removed yet",
            hint="kvmgr ops recover --retry-failed",
        )
    if storage.volume_users(conn).get(path):
        return False  # the VM is (still, or now) here: its disk stays
    with libvirt_errors(f"deleting volume {path}"):
        vol.delete(0)
    return True


def _transient_users(conn: Connection, path: str, *, wait: float) -> list[str]:
    """Transient VMs using ``path`` (an incoming migration's VM is transient until it ends),
    waited for up to ``wait`` seconds; a persistent VM using it is no reason to wait."""
    deadline = time.monotonic() + wait
    while True:
        users = []
        with libvirt_errors("listing VMs"):
            for dom in conn.virconn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT):
                try:
                    if f"'{path}'" in dom.XMLDesc(0):  # an attribute value, quoted
                        users.append(dom.name())
                except libvirt.libvirtError:
                    continue  # gone while we looked
        if not users or time.monotonic() > deadline:
            return users
        time.sleep(0.2)


# ------------------------------------------------------------------------------ entry point
def migrate(
    src: Connection,
    dst: Connection,
    name: str,
    options: MigrateOptions | None = None,
    *,
    dest_steps: Steps | None = None,
    source_steps: Steps | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    check: Preflight | None = None,
) -> MigrationResult:
    """Move VM ``name`` from ``src`` to ``dst``; refuses with the preflight's reasons first.

    ``check``: a preflight the caller made under the VM's leases just now (the control plane's
    move), so its dozen round trips to both hosts are not made twice."""
    options = options or MigrateOptions()
    if check is None:
        check = preflight(src, dst, name, offline=options.offline)
    if not check.ok:
        raise InvalidState(
            f"VM {name} cannot move: " + "; ".join(check.problems),
            hint="'kvmgr vm migrate --dry-run' lists every check",
        )
    local_dest, local_source = LocalSteps(), LocalSteps()
    try:
        result = _move(
            src, dst, check, options,
            dest_steps or local_dest, source_steps or local_source,
            progress or (lambda _p: None), cancel or threading.Event(),
        )  # fmt: skip
    except BaseException:
        # Library callers without a journal: undo here what a control plane would undo.
        if dest_steps is None:
            local_dest.recover(dst)
        if source_steps is None:
            local_source.recover(src)
        raise
    return result


def _move(
    src: Connection,
    dst: Connection,
    check: Preflight,
    options: MigrateOptions,
    dest_steps: Steps,
    source_steps: Steps,
    report: Callable[[Progress], None],
    cancel: threading.Event,
) -> MigrationResult:
    started = time.monotonic()
    # The VM's own images leave the source once it runs elsewhere: tops first, then the layers
    # under them top-down (each is removed only while nothing of the source uses it).
    owned_layers = [layer for layer in reversed(check.layers) if layer.owned]
    leaving = [(d.pool, d.volume, d.source_path) for d in check.disks]
    leaving += [(layer.pool, layer.volume, layer.path) for layer in owned_layers]
    for pool, volume, _path in leaving:
        source_steps.finish_with("migrate.remove_unused_volume", pool=pool, name=volume)
    made_volumes: list[tuple[str, str]] = []  # on the destination, in the order made
    if check.layers:
        report(Progress("copying snapshot images", time.monotonic() - started))
    checked = snapshot_moves.copy_layers(src, dst, check, dest_steps, made_volumes, cancel)
    made = _make_target_volumes(dst, check, dest_steps, made_volumes)
    dom = src.virconn.lookupByName(check.name)
    use_destination(dst, dom, made, dest_steps, live=check.live)
    snapshot_moves.hand_over(dom, check, source_steps, dest_steps, made_volumes)
    watcher = None
    if check.live:
        stats, watcher = _live(src, dst, dom, check, options, made, report, cancel, started)
        downtime = int(stats["downtime"]) if "downtime" in stats else None
        moved = stats.get("memory_processed")
    else:
        checked += _offline(src, dst, dom, check, made, report, cancel, started)
        downtime, moved = None, None
    if check.snapshots:
        report(Progress("defining snapshots", time.monotonic() - started))
        with libvirt_errors(f"looking up VM {check.name} on the destination"):
            arrived = dst.virconn.lookupByUUIDString(check.uuid)
        snapshot_moves.redefine(arrived, check.snapshot_xml, check.current_snapshot)
    removed = []
    for pool, volume, path in leaving:  # the finish actions, done now rather than by recovery
        if remove_if_unused(src, pool, volume):
            removed.append(path)
    seconds = time.monotonic() - started
    report(Progress("done", seconds, downtime_ms=downtime))
    paths = {d.source_path: made[d.target] for d in check.disks}
    paths.update({layer.path: layer.path for layer in owned_layers})
    result = MigrationResult(
        check.name, "live" if check.live else "offline", seconds, downtime, check.copy_bytes,
        removed, checked, paths, int(moved) if moved is not None else None,
        list(check.snapshots),
    )  # fmt: skip
    if watcher is not None:
        result.downtime_steps = list(watcher.steps)
        result.postcopy = watcher.postcopy_seen
        passes = stats.get("memory_iteration")
        result.memory_passes = int(passes) if passes is not None else None
    return result


def _make_target_volumes(
    dst: Connection, check: Preflight, steps: Steps, made_volumes: list[tuple[str, str]]
) -> dict[str, str]:
    """Create each disk's volume on the destination; target dev -> its path there.

    With snapshots moving, a disk's new volume is an overlay of the same image as on the source
    (copied there first), so only the top is mirrored; otherwise a linked clone is flattened.
    """
    made = {}
    layers = {layer.path: layer for layer in check.layers}
    for disk in check.disks:
        steps.undo_with("migrate.remove_unused_volume", pool=disk.pool, name=disk.volume)
        steps.progress(f"creating {disk.pool}/{disk.volume} on the destination")
        below = layers.get(disk.backing or "") if check.keeps_chains else None
        ref = storage.create_volume(
            dst, disk.pool, disk.volume, disk.capacity, disk.fmt,
            backing_path=below.path if below else None,
            backing_format=below.fmt if below else None,
        )  # fmt: skip
        made_volumes.append((disk.pool, disk.volume))
        made[disk.target] = ref.path
    return made


def use_destination(
    dst: Connection, dom: libvirt.virDomain, made: dict[str, str], steps: Steps, *, live: bool
) -> None:
    """Hold on the destination what the VM's definition there names (its networks, pools,
    volumes) until the move ends, and look each up again: a ``net delete`` there since the
    preflight fails the move now, undone, rather than landing the VM on a network that is
    gone.  The same rule as a create's define (:mod:`kvmgr.services.inputs`)."""
    for inactive in (True, False) if live else (True,):  # a live move sends both definitions
        use_definition(dst, steps, Domain.from_xml(_target_xml(dom, made, inactive=inactive)))


def _target_xml(dom: libvirt.virDomain, made: dict[str, str], *, inactive: bool) -> str:
    """The VM's definition for the destination: disks at their new paths, chains flattened."""
    flags = libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE
    if inactive:
        flags |= libvirt.VIR_DOMAIN_XML_INACTIVE
    with libvirt_errors(f"reading the definition of VM {dom.name()}"):
        domain = Domain.from_xml(dom.XMLDesc(flags))
    moved = {}
    for disk in domain.devices.disks:
        if disk.target_dev in made:
            if disk.source_file:
                moved[disk.source_file] = made[disk.target_dev]
            disk.source_file = made[disk.target_dev]
            for backing in disk.element.findall("backingStore"):
                disk.element.remove(backing)  # the copy has no base: libvirt reads the image
    meta = domain.kvmgr_metadata()
    if meta is not None and moved:  # kvmgr's record of the volumes it made names the new paths
        meta.owned_volumes = [moved.get(path, path) for path in meta.owned_volumes]
    return domain.to_xml()


# ------------------------------------------------------------------------------ live
def _live_request(
    dom: libvirt.virDomain, check: Preflight, options: MigrateOptions, made: dict[str, str]
) -> tuple[dict[str, Any], int]:
    """The parameters and flags of the virDomainMigrate3 call."""
    params: dict[str, Any] = {
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: _target_xml(dom, made, inactive=False),
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: _target_xml(dom, made, inactive=True),
    }
    if check.disks:
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = [d.target for d in check.disks]
    if options.dest_address:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{options.dest_address}"
        params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] = f"tcp://{options.dest_address}"
    if options.bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = options.bandwidth_mib
    flags = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        | libvirt.VIR_MIGRATE_AUTO_CONVERGE
        | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
    )
    if check.disks:
        # With its snapshot chain already on the destination only each disk's top is mirrored.
        incremental = check.keeps_chains and any(d.backing for d in check.disks)
        flags |= (
            libvirt.VIR_MIGRATE_NON_SHARED_INC
            if incremental
            else libvirt.VIR_MIGRATE_NON_SHARED_DISK
        )
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES
    if options.parallel and options.parallel > 1:
        flags |= libvirt.VIR_MIGRATE_PARALLEL
        params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = options.parallel
    if options.postcopy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    return params, flags


def _live(
    src: Connection,
    dst: Connection,
    dom: libvirt.virDomain,
    check: Preflight,
    options: MigrateOptions,
    made: dict[str, str],
    report: Callable[[Progress], None],
    cancel: threading.Event,
    started: float,
) -> tuple[dict[str, Any], _Watcher]:
    params, flags = _live_request(dom, check, options, made)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            dom.migrate3(dst.virconn, params, flags)
        except BaseException as err:  # handed to the waiting thread
            failure.append(err)

    worker = threading.Thread(target=run, name=f"migrate-{check.name}", daemon=True)
    worker.start()
    watcher = _Watcher(src, dom, options, report, started)
    next_sample = time.monotonic() + POLL_INTERVAL  # the first soon: it sets the downtime
    try:
        while worker.is_alive():
            worker.join(POLL_INTERVAL)
            if cancel.is_set():
                watcher.abort()
            elif worker.is_alive() and time.monotonic() >= next_sample:
                watcher.sample()
                next_sample = time.monotonic() + STATS_INTERVAL
        if not failure:
            watcher.report_completed()
    except BaseException:  # Ctrl-C: abort the job so the VM stays on the source, then re-raise
        watcher.abort()
        worker.join()
        _wait_gone(dst, check.uuid)
        raise
    finally:
        watcher.close()
    if failure:
        err = failure[0]
        _wait_gone(dst, check.uuid)
        if watcher.aborted:
            raise InvalidState(
                f"migration of VM {check.name} was aborted; it runs on the source, unchanged"
            ) from err
        if isinstance(err, libvirt.libvirtError):
            failed = translate(err, f"migrating VM {check.name}")
            if "Postcopy is not supported" in failed.message:
                # QEMU's words for "no userfaultfd here": it runs unprivileged, and the kernel
                # lets it only with this sysctl (QEMU 7.2 does not use /dev/userfaultfd).
                failed.hint = (
                    "the destination's kernel does not let QEMU use userfaultfd: set "
                    "'sysctl vm.unprivileged_userfaultfd=1' there, or move without --postcopy"
                )
            raise failed from err
        raise err
    return _completed_stats(dst, check.name), watcher


def _wait_gone(dst: Connection, uuid: str, timeout: float = 30.0) -> None:
    """Wait until the destination has dropped the incoming VM of a failed move: libvirt removes
    it just after the job ends, and the undo must not find its disk still in use."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            dom = dst.virconn.lookupByUUIDString(uuid)
        except libvirt.libvirtError:
            return
        if dom.isPersistent():
            return  # a defined VM of that UUID was there before: not ours to wait for
        time.sleep(0.1)


class _Watcher:
    """Reads the job's statistics for progress and raises the downtime while memory lags."""

    def __init__(
        self,
        src: Connection,
        dom: libvirt.virDomain,
        options: MigrateOptions,
        report: Callable[[Progress], None],
        started: float,
    ) -> None:
        self.src, self.dom, self.options, self.report = src, dom, options, report
        self.started = started
        self.downtime = options.max_downtime_ms or DOWNTIME_START_MS
        self.fixed = options.max_downtime_ms is not None
        self.set_downtime = False
        self.raised_at = 0
        self.aborted = False
        self.postcopy_started = False
        self.steps: list[int] = []
        # The switch to post-copy is QEMU's, at the end of a pass after it was asked for; the
        # source's lifecycle event (paused for post-copy) is what says it happened.
        self.postcopy_seen = False
        self.callbacks: list[int] = []
        if options.postcopy:
            with contextlib.suppress(libvirt.libvirtError):  # no events: the flag stays False
                self.callbacks.append(
                    src.virconn.domainEventRegisterAny(
                        dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event, None
                    )
                )
        # The source's statistics of the finished job, sent with its completion event: the
        # last sample (totals of disks and memory), which a short move reaches before the next
        # read every STATS_INTERVAL would.
        self.completed: dict[str, Any] | None = None
        self.completed_seen = threading.Event()
        with contextlib.suppress(libvirt.libvirtError):  # no events: no last sample
            self.callbacks.append(
                src.virconn.domainEventRegisterAny(
                    dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._job_completed, None
                )
            )

    def _event(
        self, _conn: libvirt.virConnect, _dom: libvirt.virDomain, event: int, detail: int, _o: Any
    ) -> None:
        if (event, detail) == (
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY,
        ):
            self.postcopy_seen = True

    def _job_completed(
        self, _conn: libvirt.virConnect, _dom: libvirt.virDomain, stats: dict[str, Any], _o: Any
    ) -> None:
        self.completed = dict(stats)
        self.completed_seen.set()

    def close(self) -> None:
        for callback in self.callbacks:
            with contextlib.suppress(libvirt.libvirtError):
                self.src.virconn.domainEventDeregisterAny(callback)
        self.callbacks = []

    def report_completed(self, wait: float = 1.0) -> None:
        """Report the finished job's totals as the last sample ("done"), when its event came."""
        self.completed_seen.wait(wait)
        if self.completed:
            self.report(self._progress("done", self.completed))

    def sample(self) -> None:
        try:
            stats = self.dom.jobStats(0)
        except libvirt.libvirtError:
            return  # the job ended between the check and the call
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            return
        passes = int(stats.get("memory_iteration", 0))
        if not self.set_downtime:
            self._downtime(self.downtime)
            self.set_downtime = True
        elif not self.fixed and passes - self.raised_at >= PASSES_PER_RAISE:
            if self.downtime < DOWNTIME_CEILING_MS:
                self._downtime(min(self.downtime * 2, DOWNTIME_CEILING_MS))
            self.raised_at = passes
        if self.options.postcopy and passes >= 2 and not self.postcopy_started:
            try:
                self.dom.migrateStartPostCopy(0)
                self.postcopy_started = True
            except libvirt.libvirtError:
                pass  # not yet in the memory phase: the next sample tries again
        disk_total = int(stats.get("disk_total", 0))
        disk_done = int(stats.get("disk_processed", 0))
        phase = "disks" if disk_total and disk_done < disk_total and not passes else "memory"
        self.report(self._progress(phase, stats))

    def _progress(self, phase: str, stats: dict[str, Any]) -> Progress:
        return Progress(
            phase,
            time.monotonic() - self.started,
            disk_done=int(stats.get("disk_processed", 0)),
            disk_total=int(stats.get("disk_total", 0)),
            memory_done=int(stats.get("memory_processed", 0)),
            memory_total=int(stats.get("memory_total", 0)),
            memory_remaining=int(stats.get("memory_remaining", 0)),
            rate=float(stats.get("memory_bps", 0) or stats.get("disk_bps", 0) or 0),
            passes=int(stats.get("memory_iteration", 0)),
            downtime_ms=self.downtime,
        )

    def _downtime(self, milliseconds: int) -> None:
        try:
            self.dom.migrateSetMaxDowntime(milliseconds, 0)
            self.downtime = milliseconds
            self.steps.append(milliseconds)
        except libvirt.libvirtError:
            pass  # the job is not in a phase that takes it yet; the next sample retries

    def abort(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        with contextlib.suppress(libvirt.libvirtError):  # ended already: the worker says how
            self.dom.abortJob()


def _completed_stats(dst: Connection, name: str) -> dict[str, Any]:
    """The destination's record of the completed job (downtime, data sent), kept for others."""
    flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
    try:
        return dict(dst.virconn.lookupByName(name).jobStats(flags))
    except libvirt.libvirtError:
        return {}


# ------------------------------------------------------------------------------ offline
def _offline(
    src: Connection,
    dst: Connection,
    dom: libvirt.virDomain,
    check: Preflight,
    made: dict[str, str],
    report: Callable[[Progress], None],
    cancel: threading.Event,
    started: float,
) -> list[str]:
    total = sum(d.allocation for d in check.disks)
    done = 0
    checked = []
    for disk in check.disks:
        report(Progress(f"copying {disk.target}", time.monotonic() - started, done, total))
        source = src.virconn.storagePoolLookupByName(disk.pool).storageVolLookupByName(disk.volume)
        target = dst.virconn.storageVolLookupByPath(made[disk.target])
        copy_volume(src, dst, source, target, cancel)
        done += disk.allocation
        report(Progress(f"verifying {disk.target}", time.monotonic() - started, done, total))
        checked.append(compare(src, dst, source, target, disk.target))
    params = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: _target_xml(dom, made, inactive=True)}
    flags = (
        libvirt.VIR_MIGRATE_OFFLINE
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    with libvirt_errors(f"moving the definition of VM {check.name}"):
        dom.migrate3(dst.virconn, params, flags)
    return checked
