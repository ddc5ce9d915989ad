"""Adding, removing and resizing a VM's disks (the rest of :mod:`kvmgr.services.resources`).

Adding a new volume and removing a disk with its volume are several steps each, journaled in the
operation's :class:`~kvmgr.services.steps.Steps` before they act, so neither leaves a volume,
a disk or a stale record behind when it fails or its process is killed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, InvalidState, NotFound, OperationFailed, libvirt_errors
from kvmgr.services import vms
from kvmgr.services.inputs import use_path, use_pool
from kvmgr.services.live_errors import qemu_errors
from kvmgr.services.resources import (
    _MAX_TARGETS,
    CONFIG,
    DETACH_TIMEOUT,
    DISK_BUSES,
    LIVE,
    Scope,
    _definitions,
    _device_xml,
    _find_disk,
    _owned_volumes,
    _wait_removed,
    resolve_scope,
)
from kvmgr.services.steps import Steps, owned_steps, recovery_action
from kvmgr.services.storage import (
    VOLUME_FORMATS,
    create_volume,
    delete_volume_by_path,
    find_volume_by_path,
    planned_volume_path,
)
from kvmgr.services.storage_pools import DEFAULT_POOL
from kvmgr.services.vm_removal import record_owned_volumes
from kvmgr.units import format_size
from kvmgr.xml.domain import Disk, Domain


@dataclass
class DiskChange:
    vm: str
    target: str
    path: str | None
    bus: str | None
    owned: bool
    scope: str
    capacity: int | None = None
    volume_deleted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_disk(
    conn: Connection,
    name: str,
    *,
    size: int | None = None,
    path: str | None = None,
    pool: str = DEFAULT_POOL,
    fmt: str = "qcow2",
    bus: str = "virtio",
    live: bool = False,
    config: bool = False,
    steps: Steps | None = None,
) -> DiskChange:
    """Attach a new volume of ``size`` bytes (named after the VM) or the existing ``path``.

    A new volume is three journaled steps: recorded as the VM's own (undo
    ``vm.forget_volumes``), made (undo ``volume.delete``), attached (undo ``disk.detach``), so a
    failed or killed add leaves neither a volume nor a disk nor a record behind.
    """
    if (size is None) == (path is None):
        raise InvalidInput("give either --size (a new volume) or --path (an existing disk)")
    if bus not in DISK_BUSES:
        raise InvalidInput(f"disk bus {bus!r} is not supported", hint="use virtio, scsi or sata")
    if fmt not in VOLUME_FORMATS:
        raise InvalidInput(f"disk format {fmt!r} is not supported", hint="use qcow2 or raw")
    dom = vms.lookup(conn, name)
    scope = resolve_scope(dom, live=live, config=config)
    target = _free_target(dom, scope, DISK_BUSES[bus])
    disk = Disk()
    disk.type, disk.device, disk.driver_name = "file", "disk", "qemu"
    disk.target_dev, disk.target_bus = target, bus
    if path is not None:
        disk.source_file = path
        if steps is not None:
            use_path(conn, steps, path)  # a vol delete of it waits for the attach
        disk.driver_type = _existing_format(conn, path)
        _attach(dom, disk, scope)  # one step: nothing to journal
        return DiskChange(name, target, path, bus, False, scope.describe())
    assert size is not None
    with libvirt_errors(f"reading VM {name}"):
        uuid = dom.UUIDString()
    vol_name = f"{name}-{target}.{'qcow2' if fmt == 'qcow2' else 'img'}"
    planned = planned_volume_path(conn, pool, vol_name)
    with owned_steps(conn, steps) as journal:
        use_pool(conn, journal, pool)  # a pool delete waits for the attach
        journal.uses("volume", pool, vol_name)
        journal.undo_with("vm.forget_volumes", uuid=uuid, paths=[planned])
        record_owned_volumes(dom, add=[planned])
        journal.undo_with("volume.delete", pool=pool, name=vol_name)
        journal.progress(f"creating volume {vol_name} in pool {pool}")
        volume = create_volume(conn, pool, vol_name, size, fmt)
        if volume.path != planned:
            raise OperationFailed(f"volume {vol_name} landed at {volume.path}, not {planned}")
        disk.source_file, disk.driver_type = volume.path, fmt
        journal.undo_with(
            "disk.detach", uuid=uuid, target=target, path=volume.path, flags=scope.flags
        )
        journal.progress(f"attaching disk {target} to VM {name}")
        _attach(dom, disk, scope)
    return DiskChange(name, target, disk.source_file, bus, True, scope.describe())


def _attach(dom: libvirt.virDomain, disk: Disk, scope: Scope) -> None:
    with qemu_errors(
        dom, f"attaching disk {disk.target_dev} ({scope.describe()}) to VM {dom.name()}"
    ):
        dom.attachDeviceFlags(disk.to_xml(), scope.flags)


@recovery_action("disk.detach")
def undo_attach(conn: Connection, args: dict[str, Any]) -> None:
    """Undo attaching ``path`` as disk ``target`` of VM ``uuid``: detach it where it still is
    (a disk at that target with another source is someone else's and stays)."""
    dom = vms.by_uuid(conn, str(args["uuid"]))
    if dom is None:
        return
    scopes = [(LIVE, vms.definition(dom))] if dom.isActive() else []
    if dom.isPersistent():
        scopes.append((CONFIG, vms.definition(dom, inactive=True)))
    for flag, domain in scopes:
        disk = _find_disk(domain, str(args["target"]))
        if disk is None or disk.source_path != args["path"] or not int(args["flags"]) & flag:
            continue
        with libvirt_errors(f"detaching disk {args['target']} from VM {dom.name()}"):
            dom.detachDeviceFlags(_device_xml(disk), flag)


def _existing_format(conn: Connection, path: str) -> str:
    vol = find_volume_by_path(conn, path)
    if vol is None:
        raise NotFound(
            f"disk {path!r} is not a volume of any storage pool",
            hint="give the path of a volume ('kvmgr vol list POOL'), or --size for a new one",
        )
    from kvmgr.xml.storage import StorageVolume

    with libvirt_errors(f"reading volume {path}"):
        spec = StorageVolume.from_xml(vol.XMLDesc(0))
    return spec.target_format or "raw"


def _free_target(dom: libvirt.virDomain, scope: Scope, prefix: str) -> str:
    """The first unused ``vdX``/``sdX`` in every definition the change touches."""
    used = {disk.target_dev for domain in _definitions(dom, scope) for disk in domain.devices.disks}
    for index in range(_MAX_TARGETS):
        target = f"{prefix}{chr(ord('a') + index)}"
        if target not in used:
            return target
    raise InvalidState(f"VM {dom.name()!r} has no free {prefix}X disk name left")


def _require_disk(dom: libvirt.virDomain, domains: list[Domain], target: str) -> Disk:
    found = [disk for domain in domains if (disk := _find_disk(domain, target)) is not None]
    if not found:
        targets = sorted({d.target_dev or "?" for domain in domains for d in domain.devices.disks})
        raise NotFound(
            f"VM {dom.name()!r} has no disk {target!r}",
            hint=f"its disks are {', '.join(targets) or 'none'}",
        )
    return found[0]


def remove_disk(
    conn: Connection,
    name: str,
    target: str,
    *,
    delete_volume: bool = False,
    live: bool = False,
    config: bool = False,
    timeout: float = DETACH_TIMEOUT,
    steps: Steps | None = None,
) -> DiskChange:
    """Detach disk ``target``; with ``delete_volume``, also delete it if kvmgr created it.

    With ``delete_volume`` the removal rolls forward from the journal (``disk.delete_volume``):
    once the VM no longer has the disk, its volume is deleted and then dropped from the VM's
    record; while the VM still has it (a guest that did not release it), both stay.
    """
    dom = vms.lookup(conn, name)
    scope = resolve_scope(dom, live=live, config=config)
    disk = _require_disk(dom, _definitions(dom, scope), target)
    path = disk.source_path
    owned = path is not None and path in _owned_volumes(dom)
    if delete_volume:
        _check_deletable(dom, scope, target, path, owned)
        _refuse_if_others_need(conn, name, target, path)
    with owned_steps(conn, steps) as journal:
        if delete_volume and path is not None:
            with libvirt_errors(f"reading VM {name}"):
                uuid = dom.UUIDString()
            journal.finish_with("disk.delete_volume", uuid=uuid, path=path)
        journal.progress(f"detaching disk {target} from VM {name}")
        with qemu_errors(dom, f"detaching disk {target} ({scope.describe()}) from VM {name}"):
            dom.detachDeviceFlags(_device_xml(disk), scope.flags)
        if scope.live:
            _wait_removed(
                dom,
                lambda domain: _find_disk(domain, target) is not None,
                f"disk {target}",
                timeout,
            )
        deleted = False
        if delete_volume and path is not None:
            deleted = _delete_detached(conn, dom, path)
    return DiskChange(
        name, target, path, disk.target_bus, owned, scope.describe(), volume_deleted=deleted
    )


def _delete_detached(conn: Connection, dom: libvirt.virDomain, path: str) -> bool:
    """Delete a removed disk's volume once no definition of the VM has it; then forget it."""
    domains = [vms.definition(dom, inactive=True)]
    with libvirt_errors(f"reading VM {dom.name()}"):
        if dom.isActive():
            domains.append(vms.definition(dom))
    if any(d.source_path == path for domain in domains for d in domain.devices.disks):
        return False  # not detached (yet): it stays the VM's own
    deleted = delete_volume_by_path(conn, path)
    record_owned_volumes(dom, remove=[path])
    return deleted


@recovery_action("disk.delete_volume")
def _finish_remove(conn: Connection, args: dict[str, Any]) -> None:
    dom = vms.by_uuid(conn, str(args["uuid"]))
    if dom is not None:
        _delete_detached(conn, dom, str(args["path"]))


def _check_deletable(
    dom: libvirt.virDomain, scope: Scope, target: str, path: str | None, owned: bool
) -> None:
    """Refuse to delete what kvmgr did not create, or what the VM would still use."""
    if path is None or not owned:
        raise InvalidInput(
            f"disk {target} ({path or 'no file'}) was not created by kvmgr for VM "
            f"{dom.name()!r}, so kvmgr will not delete it",
            hint="detach it without --delete-volume; delete the volume yourself if intended",
        )
    everywhere = resolve_scope(dom)
    if (everywhere.live and not scope.live) or (everywhere.config and not scope.config):
        raise InvalidInput(
            f"disk {target} would stay in the VM's "
            f"{'running guest' if everywhere.live and not scope.live else 'definition'}, "
            "so its volume cannot be deleted",
            hint="remove it both live and from the definition (no --live/--config)",
        )


def _refuse_if_others_need(conn: Connection, name: str, target: str, path: str | None) -> None:
    """Refuse (before detaching anything) to delete a volume another VM or an overlay needs."""
    users = vms.others_needing(conn, name, [path] if path else [], linked_clones=False)
    if users:
        raise InvalidState(
            f"disk {target} ({path}) of VM {name!r} is also used by {', '.join(users)}, "
            "so its volume cannot be deleted",
            hint="detach it without --delete-volume, or detach/delete it from those first",
        )


def resize_disk(conn: Connection, name: str, target: str, size: int) -> DiskChange:
    """Grow disk ``target`` to ``size`` bytes: blockResize when running, the volume when not.

    Shrinking loses data at the end of the disk and is refused.
    """
    dom = vms.lookup(conn, name)
    running = vms.is_active_state(vms.state_of(dom))
    domain = vms.definition(dom, inactive=not running)
    disk = _require_disk(dom, [domain], target)
    if disk.device not in (None, "disk"):
        raise InvalidInput(f"{target} is a {disk.device}, not a disk", hint="resize a disk")
    current = _capacity(conn, dom, disk, running)
    if size < current:
        raise InvalidInput(
            f"{format_size(size)} is smaller than disk {target}'s {format_size(current)}",
            hint="kvmgr does not shrink disks: shrinking destroys the data at the end",
        )
    if size > current:
        if running:
            with libvirt_errors(f"resizing disk {target} of VM {name}"):
                dom.blockResize(target, size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        else:
            vol = _volume_of(conn, disk)
            with libvirt_errors(f"resizing volume {disk.source_path}"):
                vol.resize(size, 0)
    path = disk.source_path
    owned = path is not None and path in _owned_volumes(dom)
    scope = "live" if running else "config"
    return DiskChange(
        name,
        target,
        path,
        disk.target_bus,
        owned,
        scope,
        capacity=_capacity(conn, dom, disk, running),
    )


def _capacity(conn: Connection, dom: libvirt.virDomain, disk: Disk, running: bool) -> int:
    if running:
        with libvirt_errors(f"reading disk {disk.target_dev} of VM {dom.name()}"):
            return int(dom.blockInfo(disk.target_dev or "", 0)[0])
    vol = _volume_of(conn, disk)
    with libvirt_errors(f"reading volume {disk.source_path}"):
        return int(vol.info()[1])


def _volume_of(conn: Connection, disk: Disk) -> libvirt.virStorageVol:
    vol = find_volume_by_path(conn, disk.source_path) if disk.source_path else None
    if vol is None:
        raise InvalidInput(
            f"disk {disk.target_dev} ({disk.source_path or 'no file'}) is not a volume of any "
            "storage pool, so kvmgr cannot resize it while the VM is off",
            hint="start the VM and resize it live, or put its file in a storage pool",
        )
    return vol
