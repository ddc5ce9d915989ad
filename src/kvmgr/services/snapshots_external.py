"""External (disk-only) snapshots: create, revert and delete, with their journals.

libvirt 9.0 can neither revert nor merge external snapshots, so kvmgr does (the module doc of
:mod:`kvmgr.services.snapshots` says how).  Each of the three is several steps, recorded in the
operation's journal before they act:

* **create**: the overlays are recorded as the VM's own (undo ``vm.forget_volumes``), made
  (undo ``volume.delete`` each), then libvirt takes the snapshot on them.  Past that point the
  journal holds ``snapshot.settle_create``: it keeps a snapshot libvirt took, or removes the
  overlays of one it did not.
* **revert**: the same for the fresh overlays on the frozen images, then
  ``snapshot.settle_revert``: when the VM's definition points at them it finishes the revert
  (snapshot record, old images no longer needed), else it removes them.
* **delete**: rolls forward only (``snapshot.delete_external``): each frozen image that can be
  merged is merged first, and the snapshot's record is dropped only after every merge succeeded,
  so a failed merge leaves the snapshot listed (and deleting again retries).  Each merge step is
  safe to repeat after a crash.
"""

from __future__ import annotations

import contextlib
import posixpath
import secrets
import subprocess
import time
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.connect.uri import is_local
from kvmgr.errors import (
    Busy,
    InvalidInput,
    NotFound,
    OperationFailed,
    Unsupported,
    libvirt_errors,
    translate,
)
from kvmgr.services import vms
from kvmgr.services.snapshots import (
    BLOCK_JOB_TIMEOUT,
    _all_snapshots,
    _frozen_images,
    _lookup_snapshot,
    _model,
    _redefine,
    _writable_disks,
    drop_backing_chain,
    owned_volumes,
)
from kvmgr.services.steps import Steps, recovery_action
from kvmgr.services.storage import delete_volume_by_path, find_volume_by_path, undo_volume
from kvmgr.services.vm_removal import forget_volumes, record_owned_volumes
from kvmgr.xml.domain import Disk, Domain
from kvmgr.xml.snapshot import Snapshot, SnapshotDisk
from kvmgr.xml.storage import StoragePool, StorageVolume


# ============================================================================ overlays
class _Overlay:
    """A qcow2 overlay to make on ``base``: pool, name and path are known before it exists."""

    def __init__(self, base: libvirt.virStorageVol, stem: str, base_format: str) -> None:
        with libvirt_errors(f"reading volume {base.name()}"):
            self.pool = base.storagePoolLookupByVolume()
            self.pool_name = self.pool.name()
            self.capacity = base.info()[1]
            taken = set(self.pool.listVolumes())
            target = StoragePool.from_xml(self.pool.XMLDesc(0)).target_path
            self.base_path = base.path()
        name = f"{stem}.qcow2"
        while name in taken:  # a name left by an earlier branch: never reuse someone's file
            name = f"{stem}-{secrets.token_hex(3)}.qcow2"
        self.name = name
        self.base_format = base_format
        if not target:
            raise Unsupported(f"storage pool {self.pool_name!r} has no directory for overlays")
        self.path = posixpath.join(target, name)

    def make(self, journal: Steps) -> str:
        """Record its undo, then make it (not storage.create_volume: its free-space check
        refreshes the pool, which libvirt refuses while any other volume is being built)."""
        journal.undo_with("volume.delete", pool=self.pool_name, name=self.name)
        spec = StorageVolume()
        spec.name, spec.capacity, spec.capacity_unit = self.name, self.capacity, "bytes"
        spec.allocation, spec.target_format = 0, "qcow2"
        spec.backing_path, spec.backing_format = self.base_path, self.base_format
        journal.progress(f"creating overlay {self.name} in pool {self.pool_name}")
        with libvirt_errors(f"creating overlay {self.name} in pool {self.pool_name}"):
            path = str(self.pool.createXML(spec.to_xml(), 0).path())
        if path != self.path:  # the path was recorded as the VM's before the volume existed
            raise OperationFailed(f"overlay {self.name} landed at {path}, not {self.path}")
        return path


def _plan_overlay(conn: Connection, vm: str, label: str, disk: Disk) -> _Overlay:
    """The overlay backed by ``disk``'s current image, in the same pool, named after the VM."""
    base = disk.source_path or ""
    with libvirt_errors(f"looking up the volume behind {base}"):
        vol = find_volume_by_path(conn, base)
    if vol is None:
        raise Unsupported(
            f"disk {disk.target_dev} ({base}) is not in a libvirt storage pool",
            hint="kvmgr makes overlays through the storage API; put the image in a pool",
        )
    return _Overlay(vol, f"{vm}.{label}.{disk.target_dev}", disk.driver_type or "raw")


def _make_owned_overlays(dom: libvirt.virDomain, plans: list[_Overlay], journal: Steps) -> None:
    # Recorded as the VM's first, so the overlays are the VM's (and deleted with it) from the
    # moment libvirt puts them under its disks; undone after they are deleted (newest first).
    paths = [plan.path for plan in plans]
    with libvirt_errors(f"reading VM {dom.name()}"):
        uuid = dom.UUIDString()
    journal.undo_with("vm.forget_volumes", uuid=uuid, paths=paths)
    record_owned_volumes(dom, add=paths)
    for plan in plans:
        plan.make(journal)


def _remove_overlays(conn: Connection, uuid: str, paths: list[str]) -> None:
    """Delete overlays nothing uses (undo_volume's rule) and drop them from the VM's record."""
    for path in paths:
        with libvirt_errors(f"looking up {path}"):
            vol = find_volume_by_path(conn, path)
            if vol is None:
                continue
            pool_name, name = vol.storagePoolLookupByVolume().name(), vol.name()
        undo_volume(conn, {"pool": pool_name, "name": name})
    forget_volumes(conn, {"uuid": uuid, "paths": paths})


# ============================================================================ create
def create_external(
    conn: Connection,
    dom: libvirt.virDomain,
    spec: Domain,
    name: str,
    description: str | None,
    *,
    running: bool,
    journal: Steps,
) -> None:
    snapshot = Snapshot()
    snapshot.name = name
    snapshot.description = description
    snapshot.memory_snapshot = "no"
    plans: list[_Overlay] = []
    for disk in spec.devices.disks:
        entry = SnapshotDisk()
        entry.name = disk.target_dev
        if disk in _writable_disks(spec) and disk.source_path:
            plan = _plan_overlay(conn, spec.name or name, name, disk)
            plans.append(plan)
            entry.snapshot, entry.type = "external", "file"
            entry.driver_type, entry.source_file = "qcow2", plan.path
        else:
            entry.snapshot = "no"
        snapshot.disks.append(entry)
    if not plans:
        raise InvalidInput(f"VM {dom.name()!r} has no writable disk to snapshot")
    _make_owned_overlays(dom, plans, journal)
    flags = (
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT  # kvmgr made the overlays itself
    )
    if running:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    # A running VM writes into the overlays from the moment libvirt switches to them, so the
    # snapshot is never undone from here: the settle action keeps it if libvirt took it.
    journal.finish_with(
        "snapshot.settle_create",
        uuid=dom.UUIDString(),
        name=name,
        overlays=[plan.path for plan in plans],
    )
    journal.progress(f"taking disk snapshot {name} of VM {dom.name()}")
    with libvirt_errors(f"taking disk snapshot {name} of VM {dom.name()}"):
        dom.snapshotCreateXML(snapshot.to_xml(), flags)


@recovery_action("snapshot.settle_create")
def settle_create(conn: Connection, args: dict[str, Any]) -> None:
    """Keep external snapshot ``name`` if libvirt took it; else remove its unused overlays."""
    dom = vms.by_uuid(conn, str(args["uuid"]))
    if dom is None:
        return
    with contextlib.suppress(NotFound):
        _lookup_snapshot(dom, str(args["name"]))
        return
    _remove_overlays(conn, str(args["uuid"]), [str(p) for p in args["overlays"]])


# ============================================================================ revert
def revert_external(
    conn: Connection,
    dom: libvirt.virDomain,
    model: Snapshot,
    journal: Steps,
) -> None:
    frozen = _frozen_images(model)
    plans: dict[str, _Overlay] = {}
    for target, image in frozen.items():
        with libvirt_errors(f"looking up {image}"):
            vol = find_volume_by_path(conn, image)
        if vol is None:
            raise NotFound(
                f"the image {image} holding snapshot {model.name}'s disk {target} is gone",
                hint="it was removed outside kvmgr; this snapshot cannot be reverted",
            )
        plans[target] = _Overlay(vol, f"{dom.name()}.{model.name}.{target}", _format_of(vol))
    _make_owned_overlays(dom, list(plans.values()), journal)
    made = {target: plan.path for target, plan in plans.items()}
    spec = vms.definition(dom, inactive=True)  # read after the record of the overlays changed it
    replaced = _point_disks(spec, made)
    with libvirt_errors(f"reading VM {dom.name()}"):
        uuid = dom.UUIDString()
    journal.finish_with(
        "snapshot.settle_revert", uuid=uuid, name=model.name, made=made, replaced=replaced
    )
    journal.progress(f"pointing VM {dom.name()} at snapshot {model.name}")
    with libvirt_errors(f"pointing VM {dom.name()} at snapshot {model.name}"):
        conn.virconn.defineXML(spec.to_xml())
    _finish_revert(conn, dom, str(model.name), made, replaced)


def _finish_revert(
    conn: Connection, dom: libvirt.virDomain, name: str, made: dict[str, str], replaced: list[str]
) -> None:
    model = _model(_lookup_snapshot(dom, name))
    for disk in model.disks:
        if disk.name in made:
            disk.source_file = made[disk.name]  # the overlay a later delete merges
    _redefine(dom, model, current=True)
    for old in replaced:
        _drop_if_unneeded(conn, dom, old)


@recovery_action("snapshot.settle_revert")
def settle_revert(conn: Connection, args: dict[str, Any]) -> None:
    """Finish a revert whose new overlays the VM's definition uses; else remove them."""
    dom = vms.by_uuid(conn, str(args["uuid"]))
    if dom is None:
        return
    made = {str(k): str(v) for k, v in args["made"].items()}
    disks = {d.target_dev: d.source_path for d in vms.definition(dom, inactive=True).devices.disks}
    if all(disks.get(target) == path for target, path in made.items()):
        _finish_revert(conn, dom, str(args["name"]), made, [str(p) for p in args["replaced"]])
    else:
        _remove_overlays(conn, str(args["uuid"]), list(made.values()))


def _format_of(vol: libvirt.virStorageVol) -> str:
    with libvirt_errors(f"reading volume {vol.name()}"):
        return StorageVolume.from_xml(vol.XMLDesc(0)).target_format or "raw"


def _point_disks(spec: Domain, images: dict[str, str]) -> list[str]:
    """Point disks (by target) at new qcow2 ``images``; return the images they used before."""
    replaced = []
    for disk in spec.devices.disks:
        if disk.target_dev in images:
            if disk.source_path:
                replaced.append(disk.source_path)
            disk.source_dev = None
            disk.type = "file"
            disk.source_file = images[disk.target_dev]
            disk.driver_type = "qcow2"
            drop_backing_chain(disk)
    return replaced


def _drop_if_unneeded(conn: Connection, dom: libvirt.virDomain, path: str) -> bool:
    """Delete an image the VM no longer runs on, if it is the VM's own and nothing needs it."""
    if path not in owned_volumes(dom):
        return False
    if path in _all_frozen_images(dom) or _children_of(conn, path) or _vm_users(conn, path):
        return False
    delete_volume_by_path(conn, path)
    record_owned_volumes(dom, remove=[path])
    return True


def _all_frozen_images(dom: libvirt.virDomain) -> set[str]:
    images: set[str] = set()
    for snap in _all_snapshots(dom):
        images.update(_frozen_images(_model(snap)).values())
    return images


def _children_of(conn: Connection, path: str) -> list[str]:
    """Paths of the volumes (in any active pool) whose backing file is ``path``."""
    children = []
    with libvirt_errors("listing storage pools"):
        pools = conn.virconn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
    for pool in pools:
        _refresh(pool)  # qemu-img may have changed backing files behind libvirt's back
        with contextlib.suppress(libvirt.libvirtError):  # a pool that vanished has no children
            for vol in pool.listAllVolumes(0):
                if StorageVolume.from_xml(vol.XMLDesc(0)).backing_path == path:
                    children.append(vol.path())
    return children


def _refresh(pool: libvirt.virStoragePool, timeout: float = 120.0) -> None:
    """Re-read a pool; libvirt refuses while a volume is being built there, so wait for that.

    Deciding what may be deleted from a stale listing could remove a needed image, so this
    raises rather than carrying on.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            pool.refresh(0)
            return
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return
            if "asynchronous jobs" not in (err.get_error_message() or ""):
                raise translate(err, f"refreshing storage pool {pool.name()}") from err
            if time.monotonic() > deadline:
                raise Busy(
                    f"storage pool {pool.name()!r} stays busy building volumes",
                    hint="try again when the running copies have finished",
                ) from err
        time.sleep(0.5)


def _vm_users(conn: Connection, path: str, *, besides: str | None = None) -> list[str]:
    """VMs (other than ``besides``) whose disks are or sit directly on ``path``."""
    from kvmgr.services.storage import volume_users

    return [
        user[3:]
        for user in volume_users(conn).get(path, [])
        if user.startswith("VM ") and user[3:] != besides
    ]


# ============================================================================ delete
def delete_external(conn: Connection, dom: libvirt.virDomain, name: str, journal: Steps) -> None:
    """Merge what can be merged, then drop the record (one roll-forward journal action)."""
    model = _model(_lookup_snapshot(dom, name))
    merges = []
    for target, image in _frozen_images(model).items():
        if _mergeable(conn, dom, image):
            (top,) = _children_of(conn, image)
            merges.append([target, image, top])
    with libvirt_errors(f"reading VM {dom.name()}"):
        uuid = dom.UUIDString()
    journal.finish_with("snapshot.delete_external", uuid=uuid, name=name, merges=merges)
    _finish_delete(conn, dom, name, merges, journal.progress)


@recovery_action("snapshot.delete_external")
def _finish_delete_action(conn: Connection, args: dict[str, Any]) -> None:
    dom = vms.by_uuid(conn, str(args["uuid"]))
    if dom is not None:
        merges = [[str(part) for part in merge] for merge in args["merges"]]
        _finish_delete(conn, dom, str(args["name"]), merges, lambda _message: None)


def _finish_delete(
    conn: Connection,
    dom: libvirt.virDomain,
    name: str,
    merges: list[list[str]],
    say: Any,
) -> None:
    try:
        snap = _lookup_snapshot(dom, name)
    except NotFound:
        return  # finished before
    for target, base, top in merges:
        say(f"merging {top} into {base}")
        _merge_down(conn, dom, target, base, top)
    # Only now, with every merge done, does the snapshot's record go.  Read the others' records
    # here: the merges re-pointed them.
    others = {s.getName(): _model(s) for s in _all_snapshots(dom) if s.getName() != name}
    say(f"deleting the record of snapshot {name}")
    with libvirt_errors(f"deleting the record of snapshot {name}"):
        snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    _restore_children(dom, others)


def _merge_down(conn: Connection, dom: libvirt.virDomain, target: str, base: str, top: str) -> None:
    """Commit overlay ``top`` into ``base``; re-point everything that used it.  Each step is
    safe to repeat: a commit already done (top no longer in the VM's chain) is not redone."""
    # If the overlay is a later snapshot's state, that state survives: after the commit the base
    # holds exactly the overlay's content, and the later snapshot's record is re-pointed below.
    with libvirt_errors(f"looking up {top}"):
        top_exists = find_volume_by_path(conn, top) is not None
    if top_exists:
        active = _active_chain(dom, target)
        if active:
            if top in active:
                _live_commit(dom, target, base, top, active_top=active[0] == top)
            # else: committed and pivoted before a crash; base already holds more than top
        elif top in _config_chain(conn, dom, target):
            _qemu_img(conn, ["commit", "-d", "-b", base, top], f"merging {top} into {base}")
        for child in _children_of(conn, top):
            # Branches qemu did not re-point.  base now holds exactly what top held, so
            # changing only the header (unsafe rebase) is exact.
            _qemu_img(
                conn,
                ["rebase", "-u", "-b", base, "-F", _format_of_path(conn, base), child],
                f"re-basing {child} onto {base}",
            )
        delete_volume_by_path(conn, top)
    record_owned_volumes(dom, remove=[top])
    _replace_references(conn, dom, top, base)


def _config_chain(conn: Connection, dom: libvirt.virDomain, target: str) -> list[str]:
    """The shut-off VM's image chain for ``target``, top first, read from the volumes."""
    spec = vms.definition(dom, inactive=True)
    path = next((d.source_path for d in spec.devices.disks if d.target_dev == target), None)
    chain: list[str] = []
    while path and path not in chain:
        chain.append(path)
        with libvirt_errors(f"looking up {path}"):
            vol = find_volume_by_path(conn, path)
            path = None if vol is None else StorageVolume.from_xml(vol.XMLDesc(0)).backing_path
    return chain


def _restore_children(dom: libvirt.virDomain, saved: dict[str, Snapshot]) -> None:
    """Undo libvirt 9.0's rewrite of re-parented children's records.

    Deleting a snapshot's record copies its disk sources into its children's saved definitions,
    which would make a child revert to its parent's state.  Each child keeps its own record,
    with only the new parent libvirt chose.
    """
    for snap in _all_snapshots(dom):
        before = saved.get(snap.getName())
        now = _model(snap)
        if before is None or _frozen_images(before) == _frozen_images(now):
            continue
        before.parent = now.parent
        with libvirt_errors(f"reading snapshot {snap.getName()}"):
            current = bool(snap.isCurrent(0))
        _redefine(dom, before, current=current)


def _mergeable(conn: Connection, dom: libvirt.virDomain, image: str) -> bool:
    """True when ``image`` is the VM's own, has exactly one overlay, and no other VM uses it."""
    if image not in owned_volumes(dom):
        return False  # e.g. a template's disk under a linked clone: never written
    if len(_children_of(conn, image)) != 1:
        return False  # branches (or nothing) on it: every branch still needs it as it is
    return not _vm_users(conn, image, besides=dom.name())


def _active_chain(dom: libvirt.virDomain, target: str) -> list[str]:
    """The running VM's image chain for ``target``, top first; empty when the VM is off."""
    with libvirt_errors(f"checking the state of VM {dom.name()}"):
        if not dom.isActive():
            return []
    live = vms.definition(dom)
    for disk in live.devices.disks:
        if disk.target_dev == target:
            paths = [disk.source_path] if disk.source_path else []
            chain = disk.element.iterfind(".//backingStore/source")
            paths += [node.get("file") or "" for node in chain]
            return [p for p in paths if p]
    return []


def _live_commit(
    dom: libvirt.virDomain, target: str, base: str, top: str, *, active_top: bool
) -> None:
    with libvirt_errors(f"merging {top} into {base} (VM {dom.name()} running)"):
        if active_top:
            dom.blockCommit(target, base, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
            _wait_block_job(dom, target, until_ready=True)
            _pivot(dom, target)
        else:
            dom.blockCommit(target, base, top, 0, 0)
            _wait_block_job(dom, target, until_ready=False)


def _pivot(dom: libvirt.virDomain, target: str) -> None:
    """Switch the disk to the merged image once QEMU reports the active commit ready."""
    deadline = time.monotonic() + BLOCK_JOB_TIMEOUT
    while True:
        try:
            dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            break
        except libvirt.libvirtError as err:
            # "not ready yet" while QEMU still copies; anything else is a real failure
            if "ready" not in (err.get_error_message() or "") or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    _wait_block_job(dom, target, until_ready=False)


def _wait_block_job(dom: libvirt.virDomain, target: str, *, until_ready: bool) -> None:
    """Wait until the block job on ``target`` is gone, or (active commit) ready to pivot."""
    deadline = time.monotonic() + BLOCK_JOB_TIMEOUT
    while time.monotonic() < deadline:
        job = dom.blockJobInfo(target, 0)
        if not job:
            return
        if until_ready and job.get("end") and job.get("cur") == job.get("end"):
            return
        time.sleep(0.1)
    raise OperationFailed(
        f"merging the disk {target} of VM {dom.name()} did not finish in {BLOCK_JOB_TIMEOUT:g} s",
        hint="the block job continues in the background; check 'kvmgr snap list' later",
    )


def _qemu_img(conn: Connection, argv: list[str], doing: str) -> None:
    """qemu-img for the jobs libvirt has no call for (merging images of a shut-off VM)."""
    if not is_local(conn.uri) or conn.is_test_driver:
        raise Unsupported(
            f"{doing} needs qemu-img on the VM's host, and this connection is remote",
            hint="run kvmgr on that host, or start the VM so libvirt can merge live",
        )
    result = subprocess.run(["qemu-img", *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise OperationFailed(f"{doing} failed: {result.stderr.strip() or result.stdout.strip()}")


def _format_of_path(conn: Connection, path: str) -> str:
    with libvirt_errors(f"looking up {path}"):
        vol = find_volume_by_path(conn, path)
    return "qcow2" if vol is None else _format_of(vol)


def _replace_references(conn: Connection, dom: libvirt.virDomain, old: str, new: str) -> None:
    """After ``old`` was merged into ``new``: the VM's disks and snapshot records use ``new``."""
    spec = vms.definition(dom, inactive=True)
    changed = False
    for disk in spec.devices.disks:
        if disk.source_path == old:
            disk.source_file = new
            drop_backing_chain(disk)
            disk.driver_type = _format_of_path(conn, new)
            changed = True
    if changed:
        with libvirt_errors(f"pointing VM {dom.name()} at {new}"):
            conn.virconn.defineXML(spec.to_xml())
    for snap in _all_snapshots(dom):
        model = _model(snap)
        touched = _swap_paths(model, old, new)
        if touched:
            with libvirt_errors(f"reading snapshot {snap.getName()}"):
                current = bool(snap.isCurrent(0))
            _redefine(dom, model, current=current)


def _swap_paths(model: Snapshot, old: str, new: str) -> bool:
    touched = False
    for disk in model.disks:
        if disk.source_file == old:
            disk.source_file, touched = new, True
    if Snapshot.domain.exists(model):
        for ddisk in model.domain.devices.disks:
            if ddisk.source_path == old:
                ddisk.source_file = new
                drop_backing_chain(ddisk)
                touched = True
    return touched
