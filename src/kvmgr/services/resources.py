"""Changing a VM's resources: vCPUs, memory, disks and NICs, live and in its definition.

Policy for *where* a change applies: ``live`` changes the running guest, ``config`` its persistent
definition (used at the next boot).  Asking for neither means "both when running, the definition
when shut off", which is what a person expects from ``kvmgr vm set``.

Every device XML comes from :mod:`kvmgr.xml.domain`.  Devices are attached and detached with
``attachDeviceFlags``/``detachDeviceFlags``, so libvirt assigns addresses and keeps everything in
the definition it does not know kvmgr cares about.  Detaching is asynchronous (the guest must
release the device), so removals wait for the device to leave the live definition.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import libvirt
from lxml import etree

from kvmgr.connect import Connection
from kvmgr.errors import (
    AlreadyExists,
    InvalidInput,
    InvalidState,
    KvmgrError,
    NotFound,
    OperationFailed,
    libvirt_errors,
)
from kvmgr.names import validate_name
from kvmgr.services import vms
from kvmgr.services.live_errors import (
    check_ceilings_cover_current,
    check_live_ceilings,
    check_memory,
    check_vcpus,
    qemu_errors,
    set_live_vcpus,
)
from kvmgr.units import format_size, to_kib
from kvmgr.xml.base import XMLObject
from kvmgr.xml.domain import KVMGR_NS, KVMGR_PREFIX, Disk, Domain, Interface

LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG

#: Seconds to wait for a guest to release a detached device before saying it did not.
DETACH_TIMEOUT = 30.0
DISK_BUSES = {"virtio": "vd", "scsi": "sd", "sata": "sd", "usb": "sd"}
NIC_MODELS = ("virtio", "e1000e", "e1000", "rtl8139")
_MAX_TARGETS = 26


# ------------------------------------------------------------------------------------ scope
@dataclass(frozen=True)
class Scope:
    """Where a change applies: the running guest, the persistent definition, or both."""

    live: bool
    config: bool

    @property
    def flags(self) -> int:
        return (LIVE if self.live else 0) | (CONFIG if self.config else 0)

    def describe(self) -> str:
        return " and ".join(
            part for part, on in (("live", self.live), ("config", self.config)) if on
        )


def resolve_scope(dom: libvirt.virDomain, *, live: bool = False, config: bool = False) -> Scope:
    """The scope of a change: what was asked, or live+config when running and config when not."""
    active = vms.is_active_state(vms.state_of(dom))
    with libvirt_errors(f"reading VM {dom.name()}"):
        persistent = bool(dom.isPersistent())
    if not live and not config:
        return Scope(live=active, config=persistent)
    if live and not active:
        raise InvalidState(
            f"VM {dom.name()!r} is not running, so nothing can change live",
            hint="drop --live to change its definition, or start it first",
        )
    if config and not persistent:
        raise InvalidState(
            f"VM {dom.name()!r} is transient: it has no definition to change",
            hint="drop --config to change only the running guest",
        )
    return Scope(live=live, config=config)


# ------------------------------------------------------------------------------------ vCPUs, memory
@dataclass
class Resources:
    """A VM's vCPUs and memory, running and as defined (``None`` where it is not running)."""

    name: str
    state: str
    vcpus_live: int | None
    vcpus_config: int
    max_vcpus: int
    memory_live: int | None
    memory_config: int
    max_memory: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resources(conn: Connection, name: str) -> Resources:
    """vCPUs and memory of VM ``name`` now and at its next boot, with their ceilings."""
    dom = vms.lookup(conn, name)
    state = vms.state_of(dom)
    config = vms.definition(dom, inactive=True)
    live = vms.definition(dom) if vms.is_active_state(state) else None
    return Resources(
        name=name,
        state=vms.STATE_NAMES.get(state, "unknown"),
        vcpus_live=_current_vcpus(live) if live else None,
        vcpus_config=_current_vcpus(config),
        max_vcpus=config.vcpus or 1,
        memory_live=_live_memory(dom) if live else None,
        memory_config=config.current_memory_bytes or 0,
        max_memory=config.memory_bytes or 0,
    )


def _current_vcpus(domain: Domain) -> int:
    return domain.vcpus_current or domain.vcpus or 1


def _live_memory(dom: libvirt.virDomain) -> int:
    with libvirt_errors(f"reading the memory of VM {dom.name()}"):
        return int(dom.info()[2]) * 1024


def set_resources(
    conn: Connection,
    name: str,
    *,
    vcpus: int | None = None,
    memory: int | None = None,
    max_vcpus: int | None = None,
    max_memory: int | None = None,
    live: bool = False,
    config: bool = False,
) -> Resources:
    """Change vCPUs and/or memory (bytes); ceilings (``max_*``) only in the definition.

    Every value is checked against the VM's ceilings before anything changes, so a refused
    request changes nothing.
    """
    if vcpus is None and memory is None and max_vcpus is None and max_memory is None:
        raise InvalidInput(
            "nothing to change", hint="give --vcpus, --memory, --max-vcpus or --max-memory"
        )
    dom = vms.lookup(conn, name)
    scope = resolve_scope(dom, live=live, config=config)
    if (max_vcpus is not None or max_memory is not None) and scope.live:
        raise InvalidState(
            "the maximum vCPUs and memory are fixed while a VM runs",
            hint=f"shut {name} down first, or change them with --config (next boot)",
        )
    defined = vms.definition(dom, inactive=True)
    ceiling_vcpus = max_vcpus or defined.vcpus or 1
    ceiling_memory = max_memory or defined.memory_bytes or 0
    if vcpus is not None:
        check_vcpus(name, vcpus, ceiling_vcpus, explicit_max=max_vcpus is not None)
    if memory is not None:
        check_memory(name, memory, ceiling_memory, explicit_max=max_memory is not None)
    check_ceilings_cover_current(name, defined, max_vcpus, max_memory, vcpus, memory)
    if scope.live:
        check_live_ceilings(dom, vcpus, memory)
    changes = _Changes(dom)
    # Ceilings first: a larger maximum must exist before a current value may use it.
    if max_vcpus is not None:
        changes.apply(
            "the maximum vCPUs",
            lambda value: dom.setVcpusFlags(value, CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM),
            max_vcpus,
            defined.vcpus or 1,
        )
    if max_memory is not None:
        changes.apply(
            "the maximum memory",
            lambda value: dom.setMemoryFlags(
                to_kib(value), CONFIG | libvirt.VIR_DOMAIN_MEM_MAXIMUM
            ),
            max_memory,
            defined.memory_bytes or 0,
        )
    # The definition before the running guest: a definition change can always be undone, a
    # guest that took a vCPU may not give it back.  (Two calls, as libvirt's test driver and
    # some older drivers refuse LIVE|CONFIG together.)
    if vcpus is not None and scope.config:
        changes.apply(
            "the vCPUs (config)",
            lambda value: dom.setVcpusFlags(value, CONFIG),
            vcpus,
            _current_vcpus(defined),
        )
    if memory is not None and scope.config:
        changes.apply(
            "the memory (config)",
            lambda value: dom.setMemoryFlags(to_kib(value), CONFIG),
            memory,
            defined.current_memory_bytes or memory,
        )
    if vcpus is not None and scope.live:
        with libvirt_errors(f"reading the vCPUs of VM {name}"):
            live_vcpus = int(dom.vcpusFlags(LIVE))
        changes.apply(
            "the vCPUs (live)",
            lambda value: set_live_vcpus(dom, value, live_vcpus),
            vcpus,
            live_vcpus,
        )
    if memory is not None and scope.live:
        changes.apply(
            "the memory (live)",
            lambda value: dom.setMemoryFlags(to_kib(value), LIVE),
            memory,
            _live_memory(dom),
        )
    return resources(conn, name)


class _Changes:
    """Applied changes with their previous values, put back in reverse order on failure."""

    def __init__(self, dom: libvirt.virDomain) -> None:
        self.dom = dom
        self.name = dom.name()
        self._done: list[tuple[str, Callable[[int], object], int]] = []

    def apply(self, what: str, setter: Callable[[int], object], value: int, previous: int) -> None:
        try:
            # A QEMU that dies under the change is reported as crashed, not as libvirt's
            # "End of file from qemu monitor".
            with qemu_errors(self.dom, f"setting {what} of VM {self.name} to {_show(what, value)}"):
                setter(value)
        except KvmgrError as err:
            problems = self._undo()
            if problems:
                err.message += "; putting back the earlier changes also failed: " + problems
            raise
        self._done.append((what, setter, previous))

    def _undo(self) -> str:
        problems = []
        for what, setter, previous in reversed(self._done):
            try:
                setter(previous)
            except libvirt.libvirtError as err:
                problems.append(f"{what}: {err.get_error_message()}")
            except KvmgrError as err:
                problems.append(f"{what}: {err.message}")
        return "; ".join(problems)


def _show(what: str, value: int) -> str:
    return format_size(value) if "memory" in what else str(value)


# ------------------------------------------------------------------------------------ metadata
def _owned_volumes(dom: libvirt.virDomain) -> list[str]:
    meta = vms.definition(dom, inactive=True).kvmgr_metadata()
    return list(meta.owned_volumes) if meta else []


def _set_owned_volumes(dom: libvirt.virDomain, paths: list[str]) -> None:
    """Rewrite kvmgr's record of the volumes it made for this VM, keeping the rest of it."""
    meta = vms.definition(dom, inactive=True).kvmgr_metadata(create=True)
    assert meta is not None  # create=True always gives one
    meta.owned_volumes = paths
    # setMetadata replaces kvmgr's element only; libvirt keeps every other <metadata> child.
    # It wants the element without a namespace and puts it in KVMGR_NS itself.
    element = copy.deepcopy(meta.element)
    for node in element.iter():
        node.tag = etree.QName(node).localname
    etree.cleanup_namespaces(element)
    with libvirt_errors(f"reading VM {dom.name()}"):
        flags = (CONFIG if dom.isPersistent() else 0) | (LIVE if dom.isActive() else 0)
    with libvirt_errors(f"recording the volumes of VM {dom.name()}"):
        dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            etree.tostring(element, encoding="unicode"),
            KVMGR_PREFIX,
            KVMGR_NS,
            flags,
        )


# ------------------------------------------------------------------------------------ devices
def _device_xml(item: XMLObject) -> str:
    """The device as libvirt should match it: without the address and alias libvirt assigned,
    so one XML matches both the live and the persistent copy."""
    element = copy.deepcopy(item.element)
    for tag in ("address", "alias"):
        for node in element.findall(tag):
            element.remove(node)
    return type(item)(element).to_xml()


def _definitions(dom: libvirt.virDomain, scope: Scope) -> list[Domain]:
    found = []
    if scope.live:
        found.append(vms.definition(dom))
    if scope.config:
        found.append(vms.definition(dom, inactive=True))
    return found


def _wait_removed(
    dom: libvirt.virDomain,
    present: Callable[[Domain], bool],
    what: str,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll the live definition until the guest released the device, or say it did not."""
    deadline = time.monotonic() + timeout
    while present(vms.definition(dom)):
        if time.monotonic() >= deadline:
            raise OperationFailed(
                f"the guest did not release {what} within {timeout:g} s",
                hint="the guest OS must support hot-unplug (ACPI/PCIe hotplug); it may still "
                "release it later. Or shut the VM down and remove it with --config",
            )
        sleep(0.2)


def _find_disk(domain: Domain, target: str) -> Disk | None:
    return next((disk for disk in domain.devices.disks if disk.target_dev == target), None)


# ------------------------------------------------------------------------------------ NICs
@dataclass
class NicChange:
    vm: str
    mac: str
    type: str | None
    source: str | None
    model: str | None
    scope: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_nic(
    conn: Connection,
    name: str,
    *,
    network: str | None = None,
    bridge: str | None = None,
    model: str | None = None,
    mac: str | None = None,
    live: bool = False,
    config: bool = False,
) -> NicChange:
    """Plug a NIC into libvirt network ``network`` or host bridge ``bridge``.

    kvmgr picks the MAC (unless given) so the live and persistent copies carry the same one and
    the caller learns it.  The model defaults to the model of the VM's other NICs, else virtio.
    """
    if (network is None) == (bridge is None):
        raise InvalidInput("give either --network or --bridge")
    if model is not None and model not in NIC_MODELS:
        raise InvalidInput(
            f"NIC model {model!r} is not supported", hint=f"use {', '.join(NIC_MODELS)}"
        )
    dom = vms.lookup(conn, name)
    scope = resolve_scope(dom, live=live, config=config)
    nic = Interface()
    if network is not None:
        _require_network(conn, network, running=scope.live)
        nic.type, nic.source_network = "network", network
    else:
        assert bridge is not None
        from kvmgr.services.networks import check_host_bridge

        check_host_bridge(conn, bridge)  # validates the name too
        nic.type, nic.source_bridge = "bridge", bridge
    nic.mac = _choose_mac(conn, mac)
    domains = _definitions(dom, scope)
    nic.model = model or _usual_model(domains)
    with qemu_errors(dom, f"attaching a NIC ({scope.describe()}) to VM {name}"):
        dom.attachDeviceFlags(nic.to_xml(), scope.flags)
    return NicChange(name, nic.mac, nic.type, nic.source, nic.model, scope.describe())


def _require_network(conn: Connection, network: str, *, running: bool) -> None:
    validate_name(network, what="network")
    with libvirt_errors(f"looking up network {network}"):
        try:
            net = conn.virconn.networkLookupByName(network)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
            raise NotFound(
                f"network {network!r} does not exist", hint="'kvmgr net list' shows the networks"
            ) from err
        if running and not net.isActive():
            raise InvalidState(
                f"network {network!r} is not running",
                hint=f"start it with 'kvmgr net start {network}'",
            )


def _usual_model(domains: list[Domain]) -> str:
    for domain in domains:
        for nic in domain.devices.interfaces:
            if nic.model:
                return str(nic.model)
    return "virtio"


def _choose_mac(conn: Connection, mac: str | None) -> str:
    """The requested MAC (refused if any VM on the host has it) or a fresh 52:54:00 one."""
    from kvmgr.services.networks import normalize_mac

    used = _macs_in_use(conn)
    if mac is not None:
        wanted = normalize_mac(mac)
        if wanted in used:
            raise AlreadyExists(
                f"MAC address {wanted} is used by VM {used[wanted]!r}",
                hint="give another --mac, or leave it out for a fresh one",
            )
        return wanted
    while True:
        # 52:54:00 is the prefix QEMU and libvirt use for their guests.
        candidate = "52:54:00:" + ":".join(f"{byte:02x}" for byte in secrets.token_bytes(3))
        if candidate not in used:
            return candidate


def _macs_in_use(conn: Connection) -> dict[str, str]:
    used: dict[str, str] = {}
    for other, spec in vms.all_definitions(conn):
        for nic in spec.devices.interfaces:
            if nic.mac:
                used[nic.mac.lower()] = other.name()
    return used


def remove_nic(
    conn: Connection,
    name: str,
    mac: str,
    *,
    live: bool = False,
    config: bool = False,
    timeout: float = DETACH_TIMEOUT,
) -> NicChange:
    """Unplug the NIC with ``mac``, waiting for the guest to release it when running."""
    from kvmgr.services.networks import normalize_mac

    wanted = normalize_mac(mac)
    dom = vms.lookup(conn, name)
    scope = resolve_scope(dom, live=live, config=config)
    domains = _definitions(dom, scope)
    found = [nic for domain in domains if (nic := _find_nic(domain, wanted)) is not None]
    if not found:
        macs = sorted({n.mac or "?" for domain in domains for n in domain.devices.interfaces})
        raise NotFound(
            f"VM {name!r} has no NIC with MAC {wanted}",
            hint=f"its NICs are {', '.join(macs) or 'none'}",
        )
    nic = found[0]
    with qemu_errors(dom, f"detaching NIC {wanted} ({scope.describe()}) from VM {name}"):
        dom.detachDeviceFlags(_device_xml(nic), scope.flags)
    if scope.live:
        _wait_removed(
            dom, lambda domain: _find_nic(domain, wanted) is not None, f"NIC {wanted}", timeout
        )
    return NicChange(name, wanted, nic.type, nic.source, nic.model, scope.describe())


def _find_nic(domain: Domain, mac: str) -> Interface | None:
    return next((nic for nic in domain.devices.interfaces if (nic.mac or "").lower() == mac), None)


# ------------------------------------------------------------------------------------ addresses
def addresses(conn: Connection, name: str, *, wait: float = 0.0) -> list[dict[str, str]]:
    """The VM's IP addresses with the source that answered (lease, agent, arp, neighbour,
    dhcp-snoop, arp-snoop); with ``wait``, up to that many seconds for one, listening to the
    guest's DHCP and ARP traffic meanwhile (a local daemon only).

    Raises :class:`NotFound` when none is known, saying why that may be.
    """
    from kvmgr.services.addresses import wait_for_addresses

    dom = vms.lookup(conn, name)
    if vms.state_of(dom) != libvirt.VIR_DOMAIN_RUNNING:
        raise InvalidState(
            f"VM {name!r} is not running, so it has no addresses",
            hint=f"start it with 'kvmgr vm start {name}'",
        )
    found, why_not = wait_for_addresses(conn, dom, wait)
    if not found:
        unheard = f"; could not listen to its traffic: {why_not}" if why_not and wait else ""
        raise NotFound(
            f"no IP address found for VM {name!r} (asked DHCP leases, guest agent, ARP and "
            f"neighbour tables{', and listened ' + format(wait, 'g') + ' s' if wait else ''}"
            f"{unheard})",
            hint="the guest may still be booting or have no DHCP client; check its console "
            f"with 'kvmgr vm console {name}'"
            + (
                ""
                if wait
                else f", or listen for its DHCP/ARP traffic: 'kvmgr vm ip {name} --wait 60'"
            ),
        )
    return [{"mac": mac, "ip": ip, "source": source} for mac, ip, source in found]


# Disks have their own module (a disk change is several journaled steps); their names stay here.
from kvmgr.services.resources_disks import (  # noqa: E402  (it imports the helpers above)
    DiskChange,
    add_disk,
    remove_disk,
    resize_disk,
)

__all__ = [
    "DiskChange",
    "NicChange",
    "Resources",
    "add_disk",
    "add_nic",
    "addresses",
    "remove_disk",
    "remove_nic",
    "resize_disk",
    "resources",
    "set_resources",
]
