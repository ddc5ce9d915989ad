"""Cloning VMs (full and linked) and templates.

* **full clone**: each disk copied into a new volume named after the clone, through libvirt's
  storage API (``storageVolCreateXMLFrom``: qemu-img convert underneath, which keeps holes as
  holes and flattens a backing chain, so the copy stands alone).
* **linked clone**: each disk becomes a qcow2 overlay on the source's image, made in a moment
  whatever the disk holds.  The source image must then never change, so linked clones are made
  from templates (VMs kvmgr will not start or snapshot) or from an external snapshot's frozen
  images, never from a VM that may run again.

A clone gets a new name, UUID and MAC addresses (libvirt makes them); CD-ROMs and read-only or
shared disks are shared, not copied.  The clone's kvmgr metadata records its own volumes and, for
a linked clone, the VM it is linked to, so deleting the clone removes only its own files and
deleting the template is refused while linked clones exist.  The source is never written: its
disks are only read (full) or used as a backing file (linked).
"""

from __future__ import annotations

import time
import uuid as uuid_module
from dataclasses import asdict, dataclass, field
from typing import Any

import libvirt

from kvmgr import __version__
from kvmgr.connect import Connection
from kvmgr.errors import (
    AlreadyExists,
    InvalidState,
    Unsupported,
    libvirt_errors,
)
from kvmgr.names import validate_name
from kvmgr.services import vm_removal as _registers_domain_actions  # noqa: F401
from kvmgr.services import vms
from kvmgr.services.inputs import use_definition
from kvmgr.services.snapshots import drop_backing_chain
from kvmgr.services.steps import Steps, owned_steps
from kvmgr.services.storage import find_volume_by_path, refuse_taken_name
from kvmgr.xml.domain import Disk, Domain
from kvmgr.xml.storage import StorageVolume


@dataclass
class CloneResult:
    name: str
    uuid: str
    source: str
    linked: bool
    volumes: list[str]
    shared: list[str] = field(default_factory=list)
    state: str = "shut off"
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ============================================================================ clone
def clone_vm(
    conn: Connection,
    source: str,
    name: str,
    *,
    linked: bool = False,
    start: bool = False,
    snapshot: str | None = None,
    steps: Steps | None = None,
) -> CloneResult:
    """Make VM ``name`` from ``source`` (optionally from its external snapshot ``snapshot``).

    Before each new volume and the definition are made, ``steps`` records how to undo them
    (``volume.delete``, ``domain.undefine`` by the UUID kvmgr gives the clone), so a clone that
    fails or is killed leaves nothing once its journal is undone.  Starting it is not part of
    the clone: a clone that does not start is kept and says so.
    """
    began = time.monotonic()
    validate_name(name, what="VM name")
    if vms.exists(conn, name):
        raise AlreadyExists(f"a VM named {name!r} already exists", hint="choose another name")
    dom = vms.lookup(conn, source)
    spec = vms.definition(dom, inactive=True)
    images = _source_images(conn, dom, spec, snapshot)
    is_template = _is_template(spec)
    if linked and not (is_template or snapshot):
        raise InvalidState(
            f"VM {source!r} may still run and change its disks under a linked clone",
            hint=f"mark it a template first ('kvmgr vm template {source}'), "
            "or make a full clone (drop --linked)",
        )
    with owned_steps(conn, steps) as journal:
        result = _build_clone(conn, spec, images, name, linked=linked, journal=journal)
    if start:
        vms.start(conn, name)
        result.state = vms.state(conn, name)
    result.seconds = time.monotonic() - began
    return result


def _is_template(spec: Domain) -> bool:
    meta = spec.kvmgr_metadata()
    return bool(meta and meta.template)


def _source_images(
    conn: Connection, dom: libvirt.virDomain, spec: Domain, snapshot: str | None
) -> dict[str, str]:
    """target -> image to copy or link; from the live disks of a shut-off VM or a snapshot."""
    if snapshot is not None:
        from kvmgr.services.snapshots import EXTERNAL, frozen_images_of, snapshot_info

        if snapshot_info(conn, dom.name(), snapshot).kind != EXTERNAL:
            raise Unsupported(
                f"snapshot {snapshot!r} is internal: its data lives inside the running disk",
                hint="clone from an external (--disk-only) snapshot, or shut the VM down",
            )
        return frozen_images_of(conn, dom.name(), snapshot)
    if vms.is_active_state(vms.state_of(dom)):
        raise InvalidState(
            f"VM {dom.name()!r} is running; its disks change while they are copied",
            hint="shut it down first, or clone from an external snapshot with --snapshot NAME",
        )
    return {
        disk.target_dev: disk.source_path
        for disk in _copied_disks(spec)
        if disk.target_dev and disk.source_path
    }


def _copied_disks(spec: Domain) -> list[Disk]:
    """Disks a clone gets its own copy of; CD-ROMs and read-only/shared disks are shared."""
    return [
        disk
        for disk in spec.devices.disks
        if disk.device in (None, "disk") and not disk.readonly and not disk.shareable
    ]


def _build_clone(
    conn: Connection,
    spec: Domain,
    images: dict[str, str],
    name: str,
    *,
    linked: bool,
    journal: Steps,
) -> CloneResult:
    source = spec.name or "?"
    clone = Domain.from_xml(spec.to_xml())
    clone.name = name
    # kvmgr names the UUID, so the undo record names this VM before it exists
    clone.uuid = str(uuid_module.uuid4())
    for nic in clone.devices.interfaces:
        nic.mac = None  # libvirt makes new MAC addresses
        nic.target_dev = None
        if nic.type == "network" and nic.source_network:
            journal.uses("network", str(nic.source_network))  # held until the clone ends
    clone.os.nvram = None  # a fresh copy of the firmware's variable store
    made: list[str] = []
    shared: list[str] = []
    for disk in clone.devices.disks:
        image = images.get(disk.target_dev or "")
        if disk not in _copied_disks(clone) or image is None:
            if disk.source_path:
                shared.append(disk.source_path)
            continue
        path = _make_disk(conn, image, name, len(made), disk, linked=linked, journal=journal)
        made.append(path)
        disk.type, disk.source_dev, disk.source_file = "file", None, path
        drop_backing_chain(disk)
        disk.driver_type = "qcow2" if linked else disk.driver_type
    _set_metadata(clone, made, source if linked else None)
    journal.undo_with("domain.undefine", uuid=clone.uuid)
    # A network is held, not required: a clone of a VM whose network was deleted with --force
    # is defined as the source is (a racing delete is refused: the source VM uses it).
    use_definition(conn, journal, clone, require_networks=False)
    journal.progress(f"defining VM {name}")
    with libvirt_errors(f"defining VM {name}"):
        conn.virconn.defineXML(clone.to_xml())
    return CloneResult(
        name=name, uuid=clone.uuid, source=source, linked=linked, volumes=made, shared=shared
    )


def _set_metadata(clone: Domain, made: list[str], linked_base: str | None) -> None:
    meta = clone.kvmgr_metadata(create=True)
    assert meta is not None
    meta.owned_volumes = made
    meta.template = None
    meta.linked_base = linked_base
    meta.created_by = f"kvmgr {__version__}"


def _make_disk(
    conn: Connection,
    image: str,
    clone: str,
    index: int,
    disk: Disk,
    *,
    linked: bool,
    journal: Steps,
) -> str:
    with libvirt_errors(f"looking up the volume behind {image}"):
        base = find_volume_by_path(conn, image)
    if base is None:
        raise Unsupported(
            f"disk {disk.target_dev} ({image}) is not in a libvirt storage pool",
            hint="kvmgr copies disks through the storage API; put the image in a pool",
        )
    with libvirt_errors(f"reading volume {base.name()}"):
        pool = base.storagePoolLookupByVolume()
        pool_name = pool.name()
        described = StorageVolume.from_xml(base.XMLDesc(0))
        fmt = described.target_format or "raw"
        capacity = described.capacity
        if capacity is None or described.capacity_unit not in (None, "bytes", "B"):
            capacity = base.info()[1]  # (libvirt writes bytes; one more call if it ever does not)
    suffix = "" if index == 0 else f"-{index}"
    spec = StorageVolume()
    spec.capacity, spec.capacity_unit, spec.allocation = capacity, "bytes", 0
    if linked:
        spec.name = f"{clone}{suffix}.qcow2"
        spec.target_format = "qcow2"
        spec.backing_path, spec.backing_format = image, fmt
    else:
        spec.name = f"{clone}{suffix}.{'qcow2' if fmt == 'qcow2' else 'img'}"
        spec.target_format = fmt
        if fmt == "qcow2":
            # Without it libvirt 9.0 converts to the old qcow2 v2 (compat=0.10), which has no
            # zero clusters; 1.1 is what qemu-img and virt-clone write, and copies faster.
            spec.compat = "1.1"
    vol_name = spec.name
    # A taken name is refused before the undo record, which would otherwise delete it.
    refuse_taken_name(conn, pool_name, vol_name)
    journal.undo_with("volume.delete", pool=pool_name, name=vol_name)
    if linked:
        journal.progress(f"creating overlay {vol_name} on {image}")
        with libvirt_errors(f"creating overlay {vol_name} on {image}"):
            return str(pool.createXML(spec.to_xml(), 0).path())
    journal.progress(f"copying {image} to {vol_name}")
    with libvirt_errors(f"copying {image} to {vol_name}"):
        return str(pool.createXMLFrom(spec.to_xml(), base, 0).path())


# ============================================================================ templates
def mark_template(conn: Connection, name: str, *, template: bool = True) -> dict[str, Any]:
    """Make a shut-off VM a template (not startable, disks frozen), or a VM again."""
    dom = vms.lookup(conn, name)
    if vms.is_active_state(vms.state_of(dom)):
        raise InvalidState(
            f"VM {name!r} is running; a template's disks must not change",
            hint=f"shut it down first: 'kvmgr vm shutdown {name}'",
        )
    spec = vms.definition(dom, inactive=True)
    if template:
        _refuse_autostart(dom, name)
    else:
        _refuse_unmark(conn, name)
    meta = spec.kvmgr_metadata(create=True)
    assert meta is not None
    meta.template = True if template else None
    with libvirt_errors(f"marking VM {name} as a template"):
        conn.virconn.defineXML(spec.to_xml())
        if template:
            # refused above if on; kept for a 'virsh autostart' racing us outside kvmgr's lock
            dom.setAutostart(0)  # a template never starts, with the host or otherwise
    return {"name": name, "template": template, "linked_clones": linked_clones(conn, name)}


def _refuse_autostart(dom: libvirt.virDomain, name: str) -> None:
    # Refused rather than switched off quietly: autostart on says someone wants this VM to boot
    # with the host (a service, say), and a template never boots again.  Dropping that wish as
    # a side effect would surface only at the next host reboot, when the VM stays down; so the
    # person decides, and one command ('autostart off') makes the template possible.
    with libvirt_errors(f"reading autostart of VM {name}"):
        on = bool(dom.autostart())
    if on:
        raise InvalidState(
            f"VM {name!r} has autostart on; a template never starts, with the host or otherwise",
            hint=f"switch it off first: 'kvmgr vm autostart {name} off'",
        )


def _refuse_unmark(conn: Connection, name: str) -> None:
    clones = linked_clones(conn, name)
    if clones:
        raise InvalidState(
            f"VM {name!r} has linked clones: {', '.join(clones)}; starting it would change "
            "the disks they are built on",
            hint="delete those clones (or make full clones of them) first",
        )


def linked_clones(conn: Connection, name: str) -> list[str]:
    """VMs whose kvmgr metadata names ``name`` as their linked base."""
    found = set()
    for dom, spec in vms.all_definitions(conn):
        meta = spec.kvmgr_metadata()
        if meta is not None and meta.linked_base == name:
            found.add(dom.name())
    return sorted(found)
