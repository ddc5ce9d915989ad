"""VM snapshots: create, list as a tree, inspect, revert, delete.

Two kinds, chosen per request and explained when refused:

* **internal** (the default): the state lives inside the VM's qcow2 files; libvirt creates,
  reverts and deletes it.  Of a shut-off VM it holds the disks; of a running VM the disks and the
  memory (the VM resumes where it was).  Needs every writable disk in qcow2, and libvirt 9.0
  cannot take one of a running UEFI (pflash) VM.
* **external disk-only** (``disk_only``): every writable disk gets a new qcow2 overlay (made by
  kvmgr through libvirt's storage API) and the image below it is frozen as the snapshot's state.
  Works with raw disks and UEFI.  libvirt 9.0 can neither revert nor merge these, so kvmgr does:

  - *revert* puts a fresh overlay on the frozen image and points the disk at it; the image the
    disk used before is dropped only when nothing (a snapshot, an overlay, another VM) needs it.
  - *delete* merges: when the frozen image has exactly one overlay on it, that overlay is
    committed into it (``blockCommit`` while the VM runs on it, ``qemu-img commit`` offline,
    where libvirt has no call) and everything that referred to the overlay refers to the merged
    image.  When the frozen image has more than one overlay (branches) or is not the VM's own,
    only the snapshot's record goes; its data stays as long as some branch needs it.

Every overlay kvmgr makes is recorded in the VM's kvmgr metadata (owned volumes), so deleting the
VM removes them, and removed from it when a merge deletes it.  One VM's snapshots are one kind:
mixing internal and external snapshots in a chain is something libvirt 9.0 cannot revert.

Invariant kept by every operation here: a snapshot's frozen image is never written to, and is
never the disk a VM runs on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.connect.uri import is_local
from kvmgr.errors import (
    AlreadyExists,
    Busy,
    InvalidInput,
    InvalidState,
    KvmgrError,
    NotFound,
    OperationFailed,
    Unsupported,
    libvirt_errors,
    translate,
)
from kvmgr.names import validate_existing_name, validate_name
from kvmgr.services import vms
from kvmgr.services.storage import delete_volume_by_path, find_volume_by_path
from kvmgr.xml.domain import Disk, Domain
from kvmgr.xml.snapshot import Snapshot, SnapshotDisk
from kvmgr.xml.storage import StorageVolume

INTERNAL = "internal"
EXTERNAL = "external"
#: How long a live merge (block commit) may take before kvmgr gives up waiting.
BLOCK_JOB_TIMEOUT = 600.0


@dataclass
class SnapshotInfo:
    """One snapshot as ``kvmgr snap list``/``info`` show it."""

    name: str
    vm: str
    parent: str | None
    children: list[str]
    current: bool
    created: str
    state: str
    kind: str
    memory: bool
    description: str | None
    depth: int = 0
    disks: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ============================================================================ reading
def _lookup_snapshot(dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot:
    validate_existing_name(name, what="snapshot name")
    try:
        return dom.snapshotLookupByName(name, 0)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise NotFound(
                f"VM {dom.name()!r} has no snapshot {name!r}",
                hint=f"'kvmgr snap list {dom.name()}' shows its snapshots",
            ) from err
        raise translate(err, f"looking up snapshot {name}") from err


def _model(snap: libvirt.virDomainSnapshot) -> Snapshot:
    with libvirt_errors(f"reading snapshot {snap.getName()}"):
        return Snapshot.from_xml(snap.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE))


def kind_of(model: Snapshot) -> str:
    external = model.memory_snapshot == "external" or any(
        disk.snapshot == "external" for disk in model.disks
    )
    return EXTERNAL if external else INTERNAL


def _all_snapshots(dom: libvirt.virDomain) -> list[libvirt.virDomainSnapshot]:
    with libvirt_errors(f"listing snapshots of VM {dom.name()}"):
        return list(dom.listAllSnapshots(0))


def list_snapshots(conn: Connection, vm: str) -> list[SnapshotInfo]:
    """Every snapshot of ``vm`` in tree order (parents before children, oldest first)."""
    dom = vms.lookup(conn, vm)
    infos = {info.name: info for info in (_info(dom, snap) for snap in _all_snapshots(dom))}
    for info in infos.values():
        if info.parent in infos:
            infos[info.parent].children.append(info.name)
    ordered: list[SnapshotInfo] = []

    def visit(info: SnapshotInfo, depth: int) -> None:
        info.depth = depth
        ordered.append(info)
        for child in sorted((infos[n] for n in info.children), key=_age):
            visit(child, depth + 1)

    for root in sorted((i for i in infos.values() if i.parent not in infos), key=_age):
        visit(root, 0)
    return ordered


def _age(info: SnapshotInfo) -> tuple[str, str]:
    return info.created, info.name


def snapshot_info(conn: Connection, vm: str, name: str) -> SnapshotInfo:
    dom = vms.lookup(conn, vm)
    info = _info(dom, _lookup_snapshot(dom, name))
    with libvirt_errors(f"listing children of snapshot {name}"):
        kids = _lookup_snapshot(dom, name).listAllChildren(0)
    info.children = sorted(child.getName() for child in kids)
    return info


def _info(dom: libvirt.virDomain, snap: libvirt.virDomainSnapshot) -> SnapshotInfo:
    model = _model(snap)
    with libvirt_errors(f"reading snapshot {snap.getName()}"):
        current = bool(snap.isCurrent(0))
    created = dt.datetime.fromtimestamp(model.creation_time or 0, tz=dt.UTC)
    frozen = _frozen_images(model)
    return SnapshotInfo(
        name=model.name or snap.getName(),
        vm=dom.name(),
        parent=model.parent,
        children=[],
        current=current,
        created=created.isoformat(timespec="seconds"),
        state=model.state or "unknown",
        kind=kind_of(model),
        memory=model.memory_snapshot in ("internal", "external"),
        description=model.description,
        disks=[
            {
                "target": disk.name,
                "snapshot": disk.snapshot,
                "overlay": disk.source_file,
                "state_image": frozen.get(disk.name or ""),
            }
            for disk in model.disks
        ],
    )


def _frozen_images(model: Snapshot) -> dict[str, str]:
    """target -> image holding the snapshot's state, for the external disks of ``model``."""
    external = {d.name for d in model.disks if d.snapshot == "external"}
    if not model.__class__.domain.exists(model):
        return {}
    return {
        disk.target_dev: disk.source_path
        for disk in model.domain.devices.disks
        if disk.target_dev and disk.target_dev in external and disk.source_path
    }


# ============================================================================ policy helpers
def _refuse_template(spec: Domain, vm: str, action: str) -> None:
    meta = spec.kvmgr_metadata()
    if meta is not None and meta.template:
        raise InvalidState(
            f"VM {vm!r} is a template: its disks are frozen, so it cannot {action}",
            hint=f"make a VM from it with 'kvmgr vm clone {vm} NEW --linked' and use that",
        )


def _writable_disks(spec: Domain) -> list[Disk]:
    """Disks whose content a snapshot must capture (not CD-ROMs or read-only media)."""
    return [
        disk
        for disk in spec.devices.disks
        if disk.device in (None, "disk") and not disk.readonly and not disk.shareable
    ]


def _is_uefi(spec: Domain) -> bool:
    return spec.os.firmware == "efi" or spec.os.loader_type == "pflash"


def choose_kind(spec: Domain, *, running: bool, live: bool, disk_only: bool) -> str:
    """Which snapshot to take, or an error explaining why none of the asked kind can be taken."""
    vm = spec.name or "?"
    if live and not running:
        raise InvalidState(
            f"VM {vm!r} is not running, so there is no memory to snapshot",
            hint="drop --live to snapshot its disks, or start the VM first",
        )
    if disk_only:
        return EXTERNAL
    raw = [d.target_dev or "?" for d in _writable_disks(spec) if d.driver_type != "qcow2"]
    if raw:
        raise Unsupported(
            f"VM {vm!r} has non-qcow2 disks ({', '.join(raw)}): internal snapshots live inside "
            "qcow2 files",
            hint="take an external snapshot with --disk-only, which works with raw disks",
        )
    if running and _is_uefi(spec):
        raise Unsupported(
            f"VM {vm!r} boots with UEFI: libvirt cannot take an internal snapshot of a running "
            "UEFI VM (its firmware variables are outside the qcow2 file)",
            hint="use --disk-only for an external disk snapshot, or shut the VM down first",
        )
    return INTERNAL


def _existing_kind(dom: libvirt.virDomain) -> str | None:
    for snap in _all_snapshots(dom):
        return kind_of(_model(snap))
    return None


# ============================================================================ metadata
def _update_owned(
    dom: libvirt.virDomain,
    *,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
) -> None:
    """Record overlays kvmgr made for (or removed from) the VM in its kvmgr metadata.

    The persistent definition is what ``vms.delete`` reads, so that is what is updated.
    """
    spec = vms.definition(dom, inactive=True)
    meta = spec.kvmgr_metadata(create=True)
    assert meta is not None
    owned = [path for path in meta.owned_volumes if path not in remove]
    owned += [path for path in add if path not in owned]
    meta.owned_volumes = owned
    with libvirt_errors(f"recording the volumes of VM {dom.name()}"):
        dom.connect().defineXML(spec.to_xml())


def owned_volumes(dom: libvirt.virDomain) -> list[str]:
    meta = vms.definition(dom, inactive=True).kvmgr_metadata()
    return [] if meta is None else meta.owned_volumes


# ============================================================================ create
def create_snapshot(
    conn: Connection,
    vm: str,
    name: str,
    *,
    description: str | None = None,
    live: bool = False,
    disk_only: bool = False,
) -> SnapshotInfo:
    """Take snapshot ``name`` of ``vm`` (see the module doc for how the kind is chosen)."""
    validate_name(name, what="snapshot name")
    dom = vms.lookup(conn, vm)
    running = vms.is_active_state(vms.state_of(dom))
    _refuse_template(vms.definition(dom, inactive=True), vm, "take snapshots")
    spec = vms.definition(dom)
    if _snapshot_exists(dom, name):
        raise AlreadyExists(f"VM {vm!r} already has a snapshot {name!r}")
    kind = choose_kind(spec, running=running, live=live, disk_only=disk_only)
    existing = _existing_kind(dom)
    if existing is not None and existing != kind:
        raise InvalidState(
            f"VM {vm!r} has {existing} snapshots; mixing them with {kind} ones leaves a "
            "chain libvirt cannot revert",
            hint="take a snapshot of the same kind"
            + (" (drop --disk-only)" if existing == INTERNAL else " (add --disk-only)"),
        )
    if kind == INTERNAL:
        _create_internal(dom, name, description)
    else:
        _create_external(conn, dom, spec, name, description, running=running)
    return _info(dom, _lookup_snapshot(dom, name))


def _snapshot_exists(dom: libvirt.virDomain, name: str) -> bool:
    try:
        _lookup_snapshot(dom, name)
    except NotFound:
        return False
    return True


def _create_internal(dom: libvirt.virDomain, name: str, description: str | None) -> None:
    spec = Snapshot()
    spec.name = name
    spec.description = description
    with libvirt_errors(f"taking snapshot {name} of VM {dom.name()}"):
        dom.snapshotCreateXML(spec.to_xml(), 0)


def _create_external(
    conn: Connection,
    dom: libvirt.virDomain,
    spec: Domain,
    name: str,
    description: str | None,
    *,
    running: bool,
) -> None:
    snapshot = Snapshot()
    snapshot.name = name
    snapshot.description = description
    snapshot.memory_snapshot = "no"
    made: list[str] = []
    try:
        for disk in spec.devices.disks:
            entry = SnapshotDisk()
            entry.name = disk.target_dev
            if disk in _writable_disks(spec) and disk.source_path:
                overlay = _new_overlay(conn, spec.name or name, name, disk)
                made.append(overlay)
                entry.snapshot, entry.type = "external", "file"
                entry.driver_type, entry.source_file = "qcow2", overlay
            else:
                entry.snapshot = "no"
            snapshot.disks.append(entry)
        if not made:
            raise InvalidInput(f"VM {dom.name()!r} has no writable disk to snapshot")
        # Recorded first, so the overlays are the VM's (and deleted with it) from the moment
        # libvirt puts them under its disks.
        _update_owned(dom, add=made)
        flags = (
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT  # kvmgr made the overlays itself
        )
        if running:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        with libvirt_errors(f"taking disk snapshot {name} of VM {dom.name()}"):
            dom.snapshotCreateXML(snapshot.to_xml(), flags)
    except BaseException:
        with contextlib.suppress(KvmgrError):
            _update_owned(dom, remove=made)
        for path in made:
            with contextlib.suppress(KvmgrError):
                delete_volume_by_path(conn, path)
        raise


def _new_overlay(conn: Connection, vm: str, label: str, disk: Disk) -> str:
    """A qcow2 volume backed by ``disk``'s current image, in the same pool, named after the VM."""
    base = disk.source_path or ""
    with libvirt_errors(f"looking up the volume behind {base}"):
        vol = find_volume_by_path(conn, base)
    if vol is None:
        raise Unsupported(
            f"disk {disk.target_dev} ({base}) is not in a libvirt storage pool",
            hint="kvmgr makes overlays through the storage API; put the image in a pool",
        )
    return _overlay_on(vol, f"{vm}.{label}.{disk.target_dev}", disk.driver_type or "raw")


def _overlay_on(base: libvirt.virStorageVol, stem: str, base_format: str) -> str:
    with libvirt_errors(f"reading volume {base.name()}"):
        pool = base.storagePoolLookupByVolume()
        pool_name = pool.name()
        capacity = base.info()[1]
        taken = set(pool.listVolumes())
    vol_name = f"{stem}.qcow2"
    while vol_name in taken:  # a name left by an earlier branch: never reuse someone's file
        vol_name = f"{stem}-{secrets.token_hex(3)}.qcow2"
    spec = StorageVolume()
    spec.name, spec.capacity, spec.capacity_unit, spec.allocation = vol_name, capacity, "bytes", 0
    spec.target_format = "qcow2"
    spec.backing_path, spec.backing_format = base.path(), base_format
    # Not storage.create_volume: its free-space check refreshes the pool, which libvirt refuses
    # while any other volume of the pool is being built; an overlay needs no room check.
    with libvirt_errors(f"creating overlay {vol_name} in pool {pool_name}"):
        return str(pool.createXML(spec.to_xml(), 0).path())


# ============================================================================ revert
def revert_snapshot(conn: Connection, vm: str, name: str, *, force: bool = False) -> SnapshotInfo:
    """Bring ``vm`` back to snapshot ``name``: disks, and memory when the snapshot has it.

    The VM ends in the snapshot's state (running for a snapshot with memory, shut off for a disk
    snapshot).  A running VM loses what it did since, so it needs ``force``.
    """
    dom = vms.lookup(conn, vm)
    _refuse_template(vms.definition(dom, inactive=True), vm, "be reverted")
    snap = _lookup_snapshot(dom, name)
    running = vms.is_active_state(vms.state_of(dom))
    if running and not force:
        raise InvalidState(
            f"VM {vm!r} is running; reverting discards everything it did since {name!r}",
            hint=f"shut it down first, or add --force: 'kvmgr snap revert {vm} {name} --force'",
        )
    model = _model(snap)
    if kind_of(model) == INTERNAL:
        with libvirt_errors(f"reverting VM {vm} to snapshot {name}"):
            dom.revertToSnapshot(snap, libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE if force else 0)
    else:
        if running:
            with libvirt_errors(f"powering off VM {vm}"):
                dom.destroy()
        _revert_external(conn, dom, snap, model)
    return _info(dom, _lookup_snapshot(dom, name))


def _revert_external(
    conn: Connection, dom: libvirt.virDomain, snap: libvirt.virDomainSnapshot, model: Snapshot
) -> None:
    frozen = _frozen_images(model)
    spec = vms.definition(dom, inactive=True)
    made: dict[str, str] = {}
    try:
        for target, image in frozen.items():
            with libvirt_errors(f"looking up {image}"):
                vol = find_volume_by_path(conn, image)
            if vol is None:
                raise NotFound(
                    f"the image {image} holding snapshot {model.name}'s disk {target} is gone",
                    hint="it was removed outside kvmgr; this snapshot cannot be reverted",
                )
            made[target] = _overlay_on(vol, f"{dom.name()}.{model.name}.{target}", _format_of(vol))
        replaced = _point_disks(spec, made)
        with libvirt_errors(f"pointing VM {dom.name()} at snapshot {model.name}"):
            conn.virconn.defineXML(spec.to_xml())
    except BaseException:
        for path in made.values():
            with contextlib.suppress(KvmgrError):
                delete_volume_by_path(conn, path)
        raise
    _update_owned(dom, add=list(made.values()))
    for disk in model.disks:
        if disk.name in made:
            disk.source_file = made[disk.name]  # the overlay a later delete merges
    _redefine(dom, model, current=True)
    for old in replaced:
        _drop_if_unneeded(conn, dom, old)


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


def drop_backing_chain(disk: Disk) -> None:
    """Forget a disk's recorded backing chain; libvirt reads it again from the image itself.

    A stale ``<backingStore>`` (libvirt writes the whole chain after a live snapshot) would
    name images the disk no longer sits on.
    """
    for node in disk.element.findall("backingStore"):
        disk.element.remove(node)


def _redefine(dom: libvirt.virDomain, model: Snapshot, *, current: bool) -> None:
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
    if current:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
    with libvirt_errors(f"updating the record of snapshot {model.name}"):
        dom.snapshotCreateXML(model.to_xml(), flags)


def _drop_if_unneeded(conn: Connection, dom: libvirt.virDomain, path: str) -> bool:
    """Delete an image the VM no longer runs on, if it is the VM's own and nothing needs it."""
    if path not in owned_volumes(dom):
        return False
    if path in _all_frozen_images(dom) or _children_of(conn, path) or _vm_users(conn, path):
        return False
    delete_volume_by_path(conn, path)
    _update_owned(dom, remove=[path])
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
def delete_snapshot(conn: Connection, vm: str, name: str, *, children: bool = False) -> list[str]:
    """Delete snapshot ``name`` (with ``children``, its whole subtree); return what was deleted.

    The VM's current state is kept.  Children of a deleted snapshot stay revertible: libvirt
    re-parents them, and any merge moves data into images they still reach.
    """
    dom = vms.lookup(conn, vm)
    _refuse_template(vms.definition(dom, inactive=True), vm, "lose snapshots")
    snap = _lookup_snapshot(dom, name)
    if kind_of(_model(snap)) == INTERNAL:
        with libvirt_errors(f"listing children of snapshot {name}"):
            doomed = [name] + (
                [
                    c.getName()
                    for c in snap.listAllChildren(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_DESCENDANTS)
                ]
                if children
                else []
            )
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN if children else 0
        with libvirt_errors(f"deleting snapshot {name} of VM {vm}"):
            snap.delete(flags)
        return doomed
    order = _subtree_leaves_first(snap) if children else [name]
    for victim in order:
        _delete_external(conn, dom, victim)
    return order


def _subtree_leaves_first(snap: libvirt.virDomainSnapshot) -> list[str]:
    with libvirt_errors(f"listing children of snapshot {snap.getName()}"):
        kids = list(snap.listAllChildren(0))
    names: list[str] = []
    for kid in kids:
        names += _subtree_leaves_first(kid)
    return [*names, snap.getName()]


def _delete_external(conn: Connection, dom: libvirt.virDomain, name: str) -> None:
    snap = _lookup_snapshot(dom, name)
    model = _model(snap)
    merges = [
        (target, image) for target, image in _frozen_images(model).items()
        if _mergeable(conn, dom, image)
    ]  # fmt: skip
    others = {s.getName(): _model(s) for s in _all_snapshots(dom) if s.getName() != name}
    with libvirt_errors(f"deleting the record of snapshot {name}"):
        snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    _restore_children(dom, others)
    # From here the snapshot is gone; its frozen images are merged where nothing else needs them.
    for target, image in merges:
        _merge_down(conn, dom, target, image)


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


def _merge_down(conn: Connection, dom: libvirt.virDomain, target: str, base: str) -> None:
    """Commit the one overlay on ``base`` into it; re-point everything that used the overlay."""
    # If the overlay is a later snapshot's state, that state survives: after the commit the base
    # holds exactly the overlay's content, and the later snapshot's record is re-pointed below.
    (top,) = _children_of(conn, base)
    active = _active_chain(dom, target)
    if top in active:
        _live_commit(dom, target, base, top, active_top=active[0] == top)
    else:
        _qemu_img(conn, ["commit", "-d", "-b", base, top], f"merging {top} into {base}")
    for child in _children_of(conn, top):
        # Branches qemu did not re-point.  base now holds exactly what top held, so changing
        # only the header (unsafe rebase) is exact.
        _qemu_img(
            conn,
            ["rebase", "-u", "-b", base, "-F", _format_of_path(conn, base), child],
            f"re-basing {child} onto {base}",
        )
    delete_volume_by_path(conn, top)
    _update_owned(dom, remove=[top])
    _replace_references(conn, dom, top, base)


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


# ============================================================================ for clones
def frozen_images_of(conn: Connection, vm: str, name: str) -> dict[str, str]:
    """target -> image holding external snapshot ``name``'s disk (clones copy from these)."""
    dom = vms.lookup(conn, vm)
    return _frozen_images(_model(_lookup_snapshot(dom, name)))


__all__: list[str] = [
    "EXTERNAL",
    "INTERNAL",
    "SnapshotInfo",
    "choose_kind",
    "create_snapshot",
    "delete_snapshot",
    "frozen_images_of",
    "kind_of",
    "list_snapshots",
    "revert_snapshot",
    "snapshot_info",
]
