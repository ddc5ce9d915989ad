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

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import (
    AlreadyExists,
    InvalidState,
    NotFound,
    Unsupported,
    libvirt_errors,
    translate,
)
from kvmgr.names import validate_existing_name, validate_name
from kvmgr.services import vms
from kvmgr.services.steps import Steps, owned_steps, recovery_action
from kvmgr.xml.domain import Disk, Domain
from kvmgr.xml.snapshot import Snapshot

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
    steps: Steps | None = None,
) -> SnapshotInfo:
    """Take snapshot ``name`` of ``vm`` (see the module doc for how the kind is chosen).

    ``steps`` journals it: an internal snapshot is undone (``snapshot.delete``) if the operation
    does not finish; an external one is journaled step by step (:mod:`.snapshots_external`).
    """
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
    with owned_steps(conn, steps) as journal:
        if kind == INTERNAL:
            _create_internal(dom, name, description, journal)
        else:
            from kvmgr.services.snapshots_external import create_external

            create_external(conn, dom, spec, name, description, running=running, journal=journal)
        return _info(dom, _lookup_snapshot(dom, name))


def _snapshot_exists(dom: libvirt.virDomain, name: str) -> bool:
    try:
        _lookup_snapshot(dom, name)
    except NotFound:
        return False
    return True


def _create_internal(
    dom: libvirt.virDomain, name: str, description: str | None, journal: Steps
) -> None:
    spec = Snapshot()
    spec.name = name
    spec.description = description
    with libvirt_errors(f"reading VM {dom.name()}"):
        uuid = dom.UUIDString()
    journal.undo_with("snapshot.delete", uuid=uuid, name=name)
    journal.progress(f"taking snapshot {name} of VM {dom.name()}")
    with libvirt_errors(f"taking snapshot {name} of VM {dom.name()}"):
        dom.snapshotCreateXML(spec.to_xml(), 0)


@recovery_action("snapshot.delete")
def undo_internal(conn: Connection, args: dict[str, Any]) -> None:
    """Undo taking internal snapshot ``name`` of VM ``uuid``: delete it if it exists (with its
    data inside the qcow2 files; the name was refused while taken, so it is this one)."""
    dom = vms.by_uuid(conn, str(args["uuid"]))
    if dom is None:
        return
    try:
        snap = _lookup_snapshot(dom, str(args["name"]))
    except NotFound:
        return
    with libvirt_errors(f"deleting snapshot {args['name']} of VM {dom.name()}"):
        snap.delete(0)


# ============================================================================ revert
def revert_snapshot(
    conn: Connection, vm: str, name: str, *, force: bool = False, steps: Steps | None = None
) -> SnapshotInfo:
    """Bring ``vm`` back to snapshot ``name``: disks, and memory when the snapshot has it.

    The VM ends in the snapshot's state (running for a snapshot with memory, shut off for a disk
    snapshot).  A running VM loses what it did since, so it needs ``force``.  An internal revert
    is one libvirt call; an external one is journaled in ``steps``.
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
        from kvmgr.services.snapshots_external import revert_external

        if running:
            with libvirt_errors(f"powering off VM {vm}"):
                dom.destroy()
        with owned_steps(conn, steps) as journal:
            revert_external(conn, dom, model, journal)
    return _info(dom, _lookup_snapshot(dom, name))


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


# ============================================================================ delete
def delete_snapshot(
    conn: Connection,
    vm: str,
    name: str,
    *,
    children: bool = False,
    steps: Steps | None = None,
) -> list[str]:
    """Delete snapshot ``name`` (with ``children``, its whole subtree); return what was deleted.

    The VM's current state is kept.  Children of a deleted snapshot stay revertible: libvirt
    re-parents them, and any merge moves data into images they still reach.  An internal delete
    is one libvirt call; an external one rolls forward from ``steps`` (merges first, the record
    last: :mod:`.snapshots_external`).
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
    from kvmgr.services.snapshots_external import delete_external

    order = _subtree_leaves_first(snap) if children else [name]
    with owned_steps(conn, steps) as journal:
        for victim in order:
            delete_external(conn, dom, victim, journal)
    return order


def _subtree_leaves_first(snap: libvirt.virDomainSnapshot) -> list[str]:
    with libvirt_errors(f"listing children of snapshot {snap.getName()}"):
        kids = list(snap.listAllChildren(0))
    names: list[str] = []
    for kid in kids:
        names += _subtree_leaves_first(kid)
    return [*names, snap.getName()]


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
