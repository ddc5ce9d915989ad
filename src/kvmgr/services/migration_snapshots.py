"""Snapshots that move with a VM: its external snapshot chain, the frozen layers and the records.

libvirt 9.0 refuses to migrate a domain that has snapshot metadata ("cannot migrate domain with
N snapshots"), live or offline, and moves none itself.  So kvmgr, around the one libvirt call
that moves the VM (:mod:`kvmgr.services.migration`):

1. plans it in the preflight: the snapshot records, parents first, with the current one
   (:func:`read_snapshots`), and the read-only images under each copied disk, bottom first
   (:func:`plan_layers`): a snapshot's frozen state (the VM's own, removed from the source after
   the move) or a template base (shared: copied only when the destination lacks it, compared by
   checksum when it has it, never removed from the source);
2. copies those layers to the same pool, name and path on the destination through storage
   streams, sparse, each read back and compared (:func:`copy_layers`), so only the top image of
   each disk is left to mirror (``VIR_MIGRATE_NON_SHARED_INC``, or a plain copy offline);
3. takes the records off the source (metadata only, children first) right before the move, after
   writing them into both hosts' journals (:func:`hand_over`);
4. redefines them on the destination after the move, parents first, the current one current
   (:func:`redefine`).

Between 3 and 4 the records live only in the journals, so each host's journal has one settle
action that is right whatever point a process died at: on the source it puts the records back
when the VM is still defined there (the move failed); on the destination it redefines them when
the VM arrived, else removes every volume made for it (newest first, each only while unused).

Internal snapshots are refused, not converted: their data is inside the qcow2 file, which a live
move copies only as the guest sees it now (the mirror), and libvirt has no call that turns an
internal snapshot into an external layer.  The refusal names the commands that remove them.

A chain keeps absolute paths (each layer's header names its backing file), so every layer goes
to the same path: the destination's pool must have the same directory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import OperationFailed, libvirt_errors
from kvmgr.services import storage
from kvmgr.services.migration_copy import compare, copy_checked
from kvmgr.services.snapshots import (
    INTERNAL,
    _frozen_images,
    _model,
    kind_of,
    list_snapshots,
    owned_volumes,
)
from kvmgr.services.steps import Steps, recovery_action
from kvmgr.units import MIB
from kvmgr.xml.snapshot import Snapshot
from kvmgr.xml.storage import StoragePool, StorageVolume

if TYPE_CHECKING:
    from kvmgr.services.migration_checks import Preflight


@dataclass(frozen=True)
class Layer:
    """A read-only image under a copied disk's top image."""

    disk: str  # target dev of the disk it is under
    path: str
    pool: str
    volume: str
    capacity: int
    allocation: int
    fmt: str
    backing: str | None  # the image under this one
    backing_fmt: str | None
    owned: bool  # the VM's (a snapshot's frozen state): removed from the source after the move
    present: bool  # the destination has it at this path already: compared, not copied


# ------------------------------------------------------------------------------ planning
def read_snapshots(src: Connection, dom: libvirt.virDomain, check: Preflight) -> None:
    """Record the VM's snapshots in ``check`` (parents first), or refuse the kinds that cannot
    move; before the disks are checked, which keep their chains when snapshots move."""
    with libvirt_errors(f"listing snapshots of VM {check.name}"):
        snaps = {s.getName(): _model(s) for s in dom.listAllSnapshots(0)}
    if not snaps:
        return
    internal = sorted(name for name, model in snaps.items() if kind_of(model) == INTERNAL)
    if internal:
        deletes = "; ".join(f"kvmgr snap delete {check.name} {name}" for name in internal)
        check.problems.append(
            f"VM {check.name} has internal snapshot(s) {', '.join(internal)}: kvmgr moves only "
            "external snapshots and refuses rather than converts internal ones (their data is "
            "inside the qcow2 file, which a live move copies only as the guest sees it now, and "
            "libvirt has no call that turns one into an external layer); delete them first "
            f"({deletes}), and take disk-only snapshots instead "
            f"('kvmgr snap create {check.name} NAME --disk-only'), which move with the VM"
        )
        return
    with_memory = sorted(n for n, m in snaps.items() if m.memory_snapshot == "external")
    if with_memory:
        check.problems.append(
            f"snapshot(s) {', '.join(with_memory)} of VM {check.name} keep a memory state file "
            "outside any pool, which kvmgr does not copy: delete them first "
            f"('kvmgr snap delete {check.name} NAME')"
        )
        return
    infos = list_snapshots(src, check.name)  # tree order: parents before children
    for info in infos:
        with libvirt_errors(f"reading snapshot {info.name}"):
            snap = dom.snapshotLookupByName(info.name, 0)
            check.snapshot_xml.append(snap.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE))
        check.snapshots.append(info.name)
        if info.current:
            check.current_snapshot = info.name
    check.warnings.append(
        f"{len(infos)} external snapshot(s) ({', '.join(check.snapshots)}) move with the VM: "
        "the images under its disks are copied first (checked by SHA-256), only the top image "
        "of each disk is mirrored, and the records are redefined on the destination"
    )


def plan_layers(src: Connection, dst: Connection, dom: libvirt.virDomain, check: Preflight) -> None:
    """The images under each copied disk, bottom first, and what keeps them from moving."""
    if not check.snapshots:
        return
    own = set(owned_volumes(dom))
    for xml in check.snapshot_xml:
        own.update(_frozen_images(Snapshot.from_xml(xml)).values())
    seen: set[str] = set()
    for disk in check.disks:
        chain: list[Layer] = []
        path = disk.backing
        while path and path not in seen:
            seen.add(path)
            layer = _layer(src, dst, disk.target, path, path in own, check)
            if layer is None:
                break
            chain.append(layer)
            path = layer.backing
        check.layers.extend(reversed(chain))
    _check_layer_pools(dst, check)


def _layer(
    src: Connection, dst: Connection, disk: str, path: str, owned: bool, check: Preflight
) -> Layer | None:
    with libvirt_errors(f"looking up {path}"):
        vol = storage.find_volume_by_path(src, path)
        if vol is None:
            check.problems.append(
                f"the image {path} under disk {disk} is in no storage pool of the source: kvmgr "
                "copies pool volumes only (put its directory in a pool)"
            )
            return None
        spec = StorageVolume.from_xml(vol.XMLDesc(0))
        _kind, capacity, allocation = vol.info()
        pool = vol.storagePoolLookupByVolume().name()
        present = storage.find_volume_by_path(dst, path) is not None
    if present and owned:
        check.problems.append(
            f"the destination already has {path}, an image of this VM's snapshots (disk {disk}): "
            "remove it there first"
        )
    elif present:
        check.warnings.append(
            f"the base {path} of disk {disk} is on the destination already: it is compared by "
            "SHA-256 before the move, not copied"
        )
    return Layer(
        disk, path, pool, vol.name(), int(capacity), int(allocation),
        spec.target_format or "raw", spec.backing_path, spec.backing_format, owned, present,
    )  # fmt: skip


def _check_layer_pools(dst: Connection, check: Preflight) -> None:
    """Each layer to copy needs its pool on the destination, at the same directory, with room."""
    needed: dict[str, int] = {}
    for layer in check.layers:
        if not layer.present:
            needed[layer.pool] = needed.get(layer.pool, 0) + layer.allocation
    for name, layer_bytes in sorted(needed.items()):
        try:
            pool = dst.virconn.storagePoolLookupByName(name)
            with libvirt_errors(f"reading pool {name} on the destination"):
                there = StoragePool.from_xml(pool.XMLDesc(0)).target_path
                available = int(pool.info()[3]) if pool.isActive() else 0
        except libvirt.libvirtError:
            check.problems.append(
                f"pool {name!r} (images under the VM's disks) does not exist on the destination"
            )
            continue
        paths = [layer.path for layer in check.layers if layer.pool == name]
        if there and any(not p.startswith(there.rstrip("/") + "/") for p in paths):
            check.problems.append(
                f"pool {name!r} has the directory {there} on the destination, but the snapshot "
                "chain's images name their backing files by absolute path: give the pool the "
                "same directory on both hosts"
            )
        size = layer_bytes + sum(d.allocation for d in check.disks if d.pool == name)
        if size > available:
            check.problems.append(
                f"pool {name!r} on the destination has {available // MIB} MiB free; the images "
                f"and disks to copy there use {size // MIB} MiB"
            )


# ------------------------------------------------------------------------------ moving
def copy_layers(
    src: Connection,
    dst: Connection,
    check: Preflight,
    dest_steps: Steps,
    made: list[tuple[str, str]],
    cancel: threading.Event,
) -> list[str]:
    """Copy (or compare) each layer, bottom first; append what was made to ``made``."""
    lines = []
    for layer in check.layers:
        with libvirt_errors(f"looking up {layer.path}"):
            source = src.virconn.storageVolLookupByPath(layer.path)
        if layer.present:
            dest_steps.progress(f"comparing {layer.path} with the destination's")
            with libvirt_errors(f"looking up {layer.path} on the destination"):
                target = dst.virconn.storageVolLookupByPath(layer.path)
            lines.append(compare(src, dst, source, target, f"base {layer.path} (there already)"))
            continue
        dest_steps.undo_with("migrate.remove_unused_volume", pool=layer.pool, name=layer.volume)
        dest_steps.progress(f"copying {layer.path} to the destination")
        ref = storage.create_volume(
            dst, layer.pool, layer.volume, layer.capacity, layer.fmt,
            backing_path=layer.backing, backing_format=layer.backing_fmt,
        )  # fmt: skip
        made.append((layer.pool, layer.volume))
        if ref.path != layer.path:  # the images below name this one by path
            raise OperationFailed(f"{layer.volume} landed at {ref.path}, not {layer.path}")
        with libvirt_errors(f"looking up {ref.path} on the destination"):
            target = dst.virconn.storageVolLookupByPath(ref.path)
        lines.append(copy_checked(src, dst, source, target, cancel, f"layer {layer.path}"))
    return lines


def hand_over(
    dom: libvirt.virDomain,
    check: Preflight,
    source_steps: Steps,
    dest_steps: Steps,
    made: list[tuple[str, str]],
) -> None:
    """Journal the records on both hosts, then take them off the source (libvirt moves no VM
    that has any).  From here the destination's journal rolls forward (see the module doc)."""
    if not check.snapshots:
        return
    records = {
        "uuid": check.uuid,
        "snapshots": check.snapshot_xml,
        "current": check.current_snapshot,
    }
    dest_steps.finish_with(
        "migrate.settle_snapshots_in", **records, volumes=[[p, v] for p, v in made]
    )
    source_steps.finish_with("migrate.settle_snapshots_out", **records)
    source_steps.progress(f"taking {len(check.snapshots)} snapshot record(s) off the source")
    for name in reversed(check.snapshots):  # children first: libvirt rewrites no parent's record
        with libvirt_errors(f"taking the record of snapshot {name} off the source"):
            snap = dom.snapshotLookupByName(name, 0)
            snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)


def redefine(dom: libvirt.virDomain, records: list[str], current: str | None) -> list[str]:
    """Define the snapshot ``records`` (parents first) the VM lacks; the names defined."""
    with libvirt_errors(f"listing snapshots of VM {dom.name()}"):
        have = set(dom.snapshotListNames(0))
    done = []
    for xml in records:
        name = Snapshot.from_xml(xml).name or "?"
        if name in have:
            continue  # redefined before a crash
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if name == current:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        with libvirt_errors(f"defining snapshot {name} of VM {dom.name()}"):
            dom.snapshotCreateXML(xml, flags)
        done.append(name)
    return done


def _persistent(conn: Connection, uuid: str) -> libvirt.virDomain | None:
    """The defined VM ``uuid`` of this host; an incoming migration's VM (transient) is not it."""
    try:
        dom = conn.virconn.lookupByUUIDString(uuid)
        return dom if dom.isPersistent() else None
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


@recovery_action("migrate.settle_snapshots_in")
def settle_in(conn: Connection, args: dict[str, Any]) -> None:
    """Destination: the VM arrived, so its records go with it; else nothing of it stays."""
    dom = _persistent(conn, str(args["uuid"]))
    if dom is not None:
        redefine(dom, [str(x) for x in args["snapshots"]], args.get("current"))
        return
    from kvmgr.services.migration import remove_if_unused  # it imports this module

    for pool, name in reversed(args["volumes"]):  # tops before the layers they sit on
        remove_if_unused(conn, str(pool), str(name))


@recovery_action("migrate.settle_snapshots_out")
def settle_out(conn: Connection, args: dict[str, Any]) -> None:
    """Source: while the VM is still defined here (the move failed), it keeps its records."""
    dom = _persistent(conn, str(args["uuid"]))
    if dom is not None:
        redefine(dom, [str(x) for x in args["snapshots"]], args.get("current"))


__all__ = ["Layer", "copy_layers", "hand_over", "plan_layers", "read_snapshots", "redefine"]
