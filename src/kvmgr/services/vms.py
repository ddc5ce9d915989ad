"""VM inventory, details and lifecycle: list, info, start, shut down, reboot, off, pause, delete.

Creation lives in :mod:`kvmgr.services.create`; live changes of resources in
:mod:`kvmgr.services.resources`.  Everything here works the same for VMs made by virt-install,
virsh or by hand as for VMs kvmgr made: kvmgr reads libvirt's definition, it keeps no copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import (
    InvalidInput,
    InvalidState,
    NotFound,
    libvirt_errors,
    translate,
)
from kvmgr.names import validate_existing_name

if TYPE_CHECKING:  # the XML model (lxml) is imported when a definition is read: 'vm list' never
    from kvmgr.services.steps import Steps
    from kvmgr.xml.domain import Domain

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
#: Why a VM is in its state, where the reason is news to a person: its QEMU died (killed,
#: crashed: libvirt saw the monitor close without a shutdown), the guest panicked, a disk
#: failed.  The ordinary reasons (booted, shut down, destroyed...) are not shown.
_REASONS = {
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED): "crashed",
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED): "failed to start",
    (libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_CRASHED_PANICKED): "guest panicked",
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_CRASHED): "guest panicked",
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR): "disk I/O error",
    (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_CRASHED): "after a guest crash",
}
_ACTIVE_STATES = {
    libvirt.VIR_DOMAIN_RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN,
    libvirt.VIR_DOMAIN_PMSUSPENDED,
    libvirt.VIR_DOMAIN_CRASHED,
}

# Stats groups for the inventory: everything a list row needs in one bulk call.
_LIST_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
)


@dataclass
class VMSummary:
    """One row of ``kvmgr vm list``."""

    name: str
    uuid: str
    state: str
    id: int | None
    vcpus: int | None
    memory: int | None  # bytes the guest has now (balloon)
    max_memory: int | None
    cpu_time_ns: int | None
    autostart: bool
    persistent: bool
    ips: list[str] = field(default_factory=list)
    #: The same addresses with their MAC and where each was seen (lease, agent, arp, ...).
    addresses: list[dict[str, str]] = field(default_factory=list)
    state_reason: str | None = None  # "crashed" for a QEMU that died (state_reason())

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its recursive deep copy cost as much as the libvirt call for
        # 5,000 VMs.  Every field is a scalar except ips and addresses, which get their own copy.
        row = {name: getattr(self, name) for name in _SUMMARY_FIELDS}
        row["ips"] = list(self.ips)
        row["addresses"] = [dict(address) for address in self.addresses]
        return row


_SUMMARY_FIELDS = tuple(item.name for item in fields(VMSummary))


# ------------------------------------------------------------------------------------ lookup
def lookup(conn: Connection, name: str) -> libvirt.virDomain:
    """The domain called ``name``, or :class:`NotFound` saying how to list the others."""
    validate_existing_name(name, what="VM name")
    try:
        return conn.virconn.lookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise NotFound(
                f"VM {name!r} does not exist", hint="'kvmgr vm list' shows the VMs"
            ) from err
        raise
    # (other libvirt errors are translated by the caller's libvirt_errors block)


def exists(conn: Connection, name: str) -> bool:
    try:
        lookup(conn, name)
    except NotFound:
        return False
    return True


def state_of(dom: libvirt.virDomain) -> int:
    with libvirt_errors(f"reading the state of VM {dom.name()}"):
        state, _reason = dom.state()
    return int(state)


def is_active_state(state: int) -> bool:
    return state in _ACTIVE_STATES


def state_reason(state: int, reason: int) -> str | None:
    """The reason worth showing beside the state ("crashed"), or None for an ordinary one."""
    return _REASONS.get((state, reason))


def describe_state(state: str, reason: str | None) -> str:
    """One phrase for people: "shut off (crashed)", or the state alone."""
    return f"{state} ({reason})" if reason else state


def definition(dom: libvirt.virDomain, *, inactive: bool = False) -> Domain:
    """The VM's libvirt definition as a model (the persistent one with ``inactive=True``)."""
    flags = libvirt.VIR_DOMAIN_XML_SECURE
    if inactive:
        flags |= libvirt.VIR_DOMAIN_XML_INACTIVE
    with libvirt_errors(f"reading the definition of VM {dom.name()}"):
        xml = dom.XMLDesc(flags)
    from kvmgr.xml.domain import Domain

    return Domain.from_xml(xml)


def all_definitions(
    conn: Connection, *, include_config: bool = True
) -> Iterator[tuple[libvirt.virDomain, Domain]]:
    """Every VM's current definition and, with ``include_config``, a running persistent VM's
    saved one too (a hot-plugged disk is only in the first, a pending change only in the second).

    The one place that answers "which VMs use X": one listAllDomains call, then one XMLDesc per
    definition (libvirt has no bulk XML call).  A VM removed while we read is skipped: it uses
    nothing any more.
    """
    with libvirt_errors("listing VMs"):
        domains = conn.virconn.listAllDomains(0)
    for dom in domains:
        try:
            yield dom, definition(dom)
            if include_config and dom.isActive() and dom.isPersistent():
                yield dom, definition(dom, inactive=True)
        except NotFound:
            continue
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise translate(err, f"reading VM {dom.name()}") from err


# ------------------------------------------------------------------------------------ inventory
def list_vms(conn: Connection, *, with_ips: bool = False) -> list[VMSummary]:
    """Every VM, from one bulk stats call plus one call each for the autostart and transient sets.

    The number of libvirt calls does not grow with the number of VMs.  ``with_ips`` adds the
    address discovery: one call per running VM where libvirt's DHCP leases answer (NAT and
    isolated networks), up to three where they do not.  It cannot be one call per network:
    matching leases to VMs needs each VM's MACs, and libvirt has no bulk call that returns them
    (the bulk stats name the host's tap devices, not MACs), so one XMLDesc per VM would cost
    as much as the per-VM lease lookup it replaces.
    """
    with libvirt_errors("listing VMs"):
        records = conn.virconn.getAllDomainStats(_LIST_STATS, 0)
        autostart = {
            dom.UUIDString()
            for dom in conn.virconn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)
        }
        # The transient set, not the persistent one: it is almost always empty, so the call
        # costs one round trip instead of an object per VM (the persistent set made list_vms
        # 1.5x raw at N=5000).  Read after the stats, so a running VM undefined meanwhile (now
        # transient) shows persistent=False: never claim a VM survives its shutdown when unsure.
        transient = {
            dom.UUIDString()
            for dom in conn.virconn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)
        }
    rows = [_summary(dom, stats, autostart, transient) for dom, stats in records]
    if with_ips and any(row.state == "running" for row in rows):
        # imported only when some VM can have an address: ~10 ms of a short command's start-up
        from kvmgr.services.addresses import discover_ips

        for row, (dom, _stats) in zip(rows, records, strict=True):
            if row.state == "running":
                found = discover_ips(conn, dom, known_running=True)  # state read just above
                row.ips = [ip for _mac, ip, _source in found]
                row.addresses = [{"mac": m, "ip": ip, "source": src} for m, ip, src in found]
    rows.sort(key=lambda row: row.name)
    return rows


def _summary(
    dom: libvirt.virDomain, stats: dict[str, Any], autostart: set[str], transient: set[str]
) -> VMSummary:
    state = stats.get("state.state", libvirt.VIR_DOMAIN_NOSTATE)
    reason = state_reason(state, stats.get("state.reason", 0))
    uuid = dom.UUIDString()
    active = is_active_state(state)
    max_kib = stats.get("balloon.maximum")
    current_kib = stats.get("balloon.current", max_kib)
    return VMSummary(
        name=dom.name(),
        uuid=uuid,
        state=STATE_NAMES.get(state, "unknown"),
        id=dom.ID() if active else None,
        vcpus=stats.get("vcpu.current"),
        memory=current_kib * 1024 if current_kib is not None else None,
        max_memory=max_kib * 1024 if max_kib is not None else None,
        cpu_time_ns=stats.get("cpu.time"),
        autostart=uuid in autostart,
        persistent=uuid not in transient,  # a transient VM (createXML) vanishes when it stops
        state_reason=reason,
    )


# ------------------------------------------------------------------------------------ info
def vm_info(conn: Connection, name: str) -> dict[str, Any]:
    """Everything a person wants to know about one VM, from its live definition."""
    dom = lookup(conn, name)
    spec = definition(dom)
    with libvirt_errors(f"reading VM {name}"):
        state, reason = dom.state()
        autostart = bool(dom.autostart())
        persistent = bool(dom.isPersistent())
    meta = spec.kvmgr_metadata()
    from kvmgr.services.vnc import displays  # it builds on this module

    info: dict[str, Any] = {
        "name": spec.name,
        "uuid": spec.uuid,
        "state": STATE_NAMES.get(state, "unknown"),
        "state_reason": state_reason(state, reason),
        "domain_type": spec.type,
        "os": meta.os_id if meta else None,
        "managed_by_kvmgr": bool(meta is not None and meta.created_by),
        "template": bool(meta and meta.template),
        "vcpus": spec.vcpus_current or spec.vcpus,
        "max_vcpus": spec.vcpus,
        "memory": spec.current_memory_bytes,
        "max_memory": spec.memory_bytes,
        "machine": spec.os.machine,
        "arch": spec.os.arch,
        "firmware": _firmware(spec),
        "autostart": autostart,
        "persistent": persistent,
        "disks": [
            {
                "target": disk.target_dev,
                "device": disk.device,
                "bus": disk.target_bus,
                "format": disk.driver_type,
                "source": disk.source_path or disk.source_volume,
                "owned": bool(meta and (disk.source_path in meta.owned_volumes)),
            }
            for disk in spec.devices.disks
        ],
        "nics": [
            {"mac": nic.mac, "type": nic.type, "source": nic.source, "model": nic.model}
            for nic in spec.devices.interfaces
        ],
        # type, listen, address, socket, port (once running), password set or not
        "graphics": [display.as_dict() for display in displays(spec)],
        "consoles": [
            {"type": con.type, "target": con.target_type, "pty": con.source_path}
            for con in spec.devices.consoles
        ],
    }
    if state == libvirt.VIR_DOMAIN_RUNNING:
        from kvmgr.services.addresses import discover_ips

        info["ips"] = [
            {"mac": mac, "ip": ip, "source": source} for mac, ip, source in discover_ips(conn, dom)
        ]
    return info


def _firmware(spec: Domain) -> str:
    if spec.os.firmware == "efi" or (spec.os.loader_type == "pflash"):
        return "uefi"
    return "bios"


# ------------------------------------------------------------------------------------ lifecycle
def start(conn: Connection, name: str) -> None:
    with libvirt_errors(f"starting VM {name}"):
        startable(conn, name).create()


def startable(conn: Connection, name: str) -> libvirt.virDomain:
    """VM ``name``, refused unless it can start (shut off or crashed, and not a template)."""
    dom = lookup(conn, name)
    _refuse_template(dom)
    if state_of(dom) == libvirt.VIR_DOMAIN_RUNNING:
        raise InvalidState(f"VM {name!r} is already running")
    if state_of(dom) == libvirt.VIR_DOMAIN_PAUSED:
        raise InvalidState(
            f"VM {name!r} is paused", hint=f"resume it with 'kvmgr vm resume {name}'"
        )
    return dom


def _refuse_template(dom: libvirt.virDomain) -> None:
    meta = definition(dom, inactive=True).kvmgr_metadata()
    if meta is not None and meta.template:
        raise InvalidState(
            f"VM {dom.name()!r} is a template and cannot be started",
            hint=f"make a VM from it with 'kvmgr vm clone {dom.name()} NEW --linked'",
        )


def shutdown(
    conn: Connection,
    name: str,
    *,
    timeout: float = 120.0,
    force: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Ask the guest to power off (ACPI); wait up to ``timeout`` s; with ``force``, power off.

    Returns how it ended: ``"shut off"`` or ``"forced off"``.
    """
    if timeout < 0:
        raise InvalidInput(f"timeout {timeout:g} must not be negative", hint="e.g. --timeout 120")
    dom = lookup(conn, name)
    if not is_active_state(state_of(dom)):
        raise InvalidState(f"VM {name!r} is not running")
    with libvirt_errors(f"shutting down VM {name}"):
        dom.shutdownFlags(0)  # the driver picks ACPI or the guest agent, as virsh does
    if _wait_for_state(dom, libvirt.VIR_DOMAIN_SHUTOFF, timeout, sleep):
        return "shut off"
    if not force:
        raise InvalidState(
            f"VM {name!r} did not shut down within {timeout:g} s",
            hint=f"the guest may ignore ACPI; use 'kvmgr vm shutdown {name} --force' or 'vm off'",
        )
    force_off(conn, name)
    return "forced off"


def _wait_for_state(
    dom: libvirt.virDomain, wanted: int, timeout: float, sleep: Callable[[float], None]
) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if state_of(dom) == wanted:
            return True
        if time.monotonic() >= deadline:
            return False
        sleep(0.25)


def reboot(conn: Connection, name: str) -> None:
    dom = lookup(conn, name)
    if state_of(dom) != libvirt.VIR_DOMAIN_RUNNING:
        raise InvalidState(f"VM {name!r} is not running")
    with libvirt_errors(f"rebooting VM {name}"):
        dom.reboot(0)


def reset(conn: Connection, name: str) -> None:
    """Hard reset, like pressing the reset button (for guests that ignore ACPI)."""
    dom = lookup(conn, name)
    with libvirt_errors(f"resetting VM {name}"):
        dom.reset(0)


def force_off(conn: Connection, name: str) -> None:
    dom = lookup(conn, name)
    if not is_active_state(state_of(dom)):
        raise InvalidState(f"VM {name!r} is not running")
    try:
        # SIGTERM first, so QEMU can flush what it caches of the disks ...
        dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
    except libvirt.libvirtError as err:
        # ... but a hung QEMU (stuck in I/O, stopped) ignores SIGTERM, and libvirt gives up after
        # ~10 s without escalating.  The plain destroy sends SIGTERM and then SIGKILL.
        with libvirt_errors(f"powering off VM {name}"):
            if not dom.isActive():
                return
            if err.get_error_code() not in (
                libvirt.VIR_ERR_OPERATION_FAILED,
                libvirt.VIR_ERR_SYSTEM_ERROR,
                libvirt.VIR_ERR_OPERATION_TIMEOUT,
            ):
                raise
            dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_DEFAULT)


def pause(conn: Connection, name: str) -> None:
    dom = lookup(conn, name)
    if state_of(dom) != libvirt.VIR_DOMAIN_RUNNING:
        raise InvalidState(f"VM {name!r} is not running")
    with libvirt_errors(f"pausing VM {name}"):
        dom.suspend()


def resume(conn: Connection, name: str) -> None:
    dom = lookup(conn, name)
    if state_of(dom) != libvirt.VIR_DOMAIN_PAUSED:
        raise InvalidState(f"VM {name!r} is not paused")
    with libvirt_errors(f"resuming VM {name}"):
        dom.resume()


def set_autostart(conn: Connection, name: str, enabled: bool) -> None:
    """Start the VM with the host, or not.  A template is refused: it would boot under its
    linked clones and change the disks they are built on.  Turning autostart off is always
    allowed.  Callers hold the VM's lease, so it cannot race ``mark_template``."""
    if not enabled:
        dom = lookup(conn, name)
        with libvirt_errors(f"setting autostart of VM {name}"):
            dom.setAutostart(0)
        return
    dom = lookup(conn, name)
    meta = definition(dom, inactive=True).kvmgr_metadata()
    if meta is not None and meta.template:
        raise InvalidInput(
            f"VM {name!r} is a template and cannot autostart: it would boot under its "
            "linked clones and change the disks they are built on",
            hint=f"autostart a clone instead ('kvmgr vm clone {name} NEW --linked')",
        )
    with libvirt_errors(f"setting autostart of VM {name}"):
        dom.setAutostart(1)


def state(conn: Connection, name: str) -> str:
    return STATE_NAMES.get(state_of(lookup(conn, name)), "unknown")


# ------------------------------------------------------------------------------------ delete
def delete(
    conn: Connection,
    name: str,
    *,
    force: bool = False,
    keep_disks: bool = False,
    steps: Steps | None = None,
) -> list[str]:
    """Remove a VM with the volumes kvmgr made for it (:func:`kvmgr.services.vm_removal.delete`)."""
    from kvmgr.services import vm_removal

    return vm_removal.delete(conn, name, force=force, keep_disks=keep_disks, steps=steps)


def by_uuid(conn: Connection, uuid: str) -> libvirt.virDomain | None:
    """The domain with ``uuid``, or None when there is none (journals name VMs by UUID: a VM
    of the same name made later by someone else is never touched)."""
    try:
        return conn.virconn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise translate(err, f"looking up VM {uuid}") from err


_UNDEFINE_METADATA = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
)
# The emulated TPM's state (/var/lib/libvirt/swtpm/UUID) is said outright rather than left to
# the daemon's default; libvirt before 8.9 does not know those flags and is asked without them.
_REMOVING_STATE = (
    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_TPM,
    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM,
)
_KEEPING_STATE = (
    libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_TPM,
    libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM,
)
_UNDEFINE_BASIC = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
)


def undefine(dom: libvirt.virDomain, *, keep_state: bool = False) -> None:
    """Remove a domain's definition with its saved state and snapshot metadata, and its NVRAM
    and TPM state unless ``keep_state``.

    ``keep_state`` is for a delete that keeps the disks: a disk encrypted against the VM's TPM
    (BitLocker) is unreadable without that state, and redefining a VM with the same UUID finds
    both again.  Drivers that do not know some of those flags (libvirt's test driver, older
    daemons) are asked again with the ones every driver supports.
    """
    name = dom.name()
    for state_flags in _KEEPING_STATE if keep_state else _REMOVING_STATE:
        try:
            dom.undefineFlags(_UNDEFINE_METADATA | state_flags)
            return
        except libvirt.libvirtError as err:
            unknown = (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT)
            if err.get_error_code() not in unknown:
                raise translate(err, f"removing VM {name}") from err
    with libvirt_errors(f"removing VM {name}"):
        dom.undefineFlags(_UNDEFINE_BASIC)


def others_needing(
    conn: Connection, name: str, paths: list[str], *, linked_clones: bool = True
) -> list[str]:
    """What besides VM ``name`` needs one of ``paths``, e.g. ``["VM b", "volume pool/c.qcow2"]``.

    Another VM's definition (live or saved) using one as a disk or backing file, any volume in
    any pool backed by one (an overlay or linked clone) and not among ``paths`` itself (a VM's
    own snapshot overlays go with it), and with ``linked_clones`` every VM recorded as a linked
    clone of ``name``.  The one check both deleting a VM and deleting a removed disk's volume
    make before they act.
    """
    if not paths:
        return []
    from kvmgr.services.storage import find_volume_by_path, volume_users

    usage = volume_users(conn)
    going = {f"VM {name}"}
    for path in paths:
        vol = find_volume_by_path(conn, path)
        if vol is not None:
            with libvirt_errors(f"reading volume {path}"):
                going.add(f"volume {vol.storagePoolLookupByVolume().name()}/{vol.name()}")
    users = {user for path in set(paths) for user in usage.get(path, []) if user not in going}
    if linked_clones:
        for other, spec in all_definitions(conn):
            meta = spec.kvmgr_metadata()
            if other.name() != name and meta is not None and meta.linked_base == name:
                users.add(f"VM {other.name()}")
    return sorted(users)


def _refuse_if_others_need(conn: Connection, name: str, paths: list[str]) -> None:
    """Refuse when something else uses one of ``paths`` or is a linked clone of this VM."""
    users = others_needing(conn, name, paths)
    if users:
        raise InvalidState(
            f"VM {name!r} has disks that others need: {', '.join(users)}",
            hint="delete those first, or use --keep-disks to keep the disks",
        )
