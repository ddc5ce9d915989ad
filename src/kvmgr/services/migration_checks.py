"""Migration preflight: everything that would make a move fail, found before anything moves.

:func:`preflight` reads the VM on the source and the destination host through libvirt and returns
a :class:`Preflight`: the disks to copy (pool, volume, size), the media expected at the same path,
the data to move, and every reason to refuse (``problems``) or to be careful (``warnings``).
:mod:`kvmgr.services.migration` refuses to start while ``problems`` is not empty, and
``kvmgr vm migrate --dry-run`` prints it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import libvirt
from lxml import etree

from kvmgr.connect import Connection
from kvmgr.errors import libvirt_errors
from kvmgr.services import vms
from kvmgr.services.migration_dhcp import HeldReservation, conflicts, reservations_of
from kvmgr.services.migration_snapshots import Layer, plan_layers, read_snapshots
from kvmgr.units import MIB
from kvmgr.xml.base import parse_xml
from kvmgr.xml.domain import Disk, Domain

#: Devices a VM cannot take to another host: they name this host's hardware or directories.
_UNMOVABLE = {
    "hostdev": "a host device (PCI/USB passthrough)",
    "filesystem": "a host directory shared into the guest",
    "smartcard": "a host smartcard",
}
#: Memory the destination keeps for itself beyond the guest's (QEMU's own use, page tables).
MEMORY_MARGIN = 64 * MIB


@dataclass(frozen=True)
class DiskCopy:
    """One disk whose volume is copied: where it is on the source, what is made on the target."""

    target: str  # vda
    source_path: str
    pool: str
    volume: str
    capacity: int
    allocation: int
    fmt: str
    backing: str | None  # a linked clone's base: the copy on the destination is flattened


@dataclass
class Preflight:
    name: str
    uuid: str
    live: bool
    memory: int  # bytes the guest has now
    disks: list[DiskCopy] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)  # read-only media expected at the same path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: A CPU both hosts run (libvirt's baseline of their host-model CPUs), offered as the fix
    #: when the guest's CPU cannot run on the destination: ``<cpu>`` XML for the VM's definition.
    cpu_baseline: str | None = None
    #: The source's DHCP reservations for the VM's NICs: they follow it (migration_dhcp).
    reservations: list[HeldReservation] = field(default_factory=list)
    #: External snapshots that move with the VM (migration_snapshots): names and records,
    #: parents first, the current one, and the read-only images under its disks, bottom first.
    snapshots: list[str] = field(default_factory=list)
    snapshot_xml: list[str] = field(default_factory=list)
    current_snapshot: str | None = None
    layers: list[Layer] = field(default_factory=list)

    @property
    def keeps_chains(self) -> bool:
        """Disks keep the images under them (snapshots move), rather than being flattened."""
        return bool(self.snapshots)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def copy_bytes(self) -> int:
        """Data to move: each disk's allocated bytes, plus the guest's memory when live."""
        layers = sum(layer.allocation for layer in self.layers if not layer.present)
        return layers + sum(d.allocation for d in self.disks) + (self.memory if self.live else 0)

    def estimate_seconds(self, bandwidth: float | None) -> float | None:
        """Time to copy :attr:`copy_bytes` at ``bandwidth`` bytes/s (None: unknown)."""
        return self.copy_bytes / bandwidth if bandwidth else None

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "uuid": self.uuid,
            "mode": "live" if self.live else "offline",
            "memory": self.memory,
            "disks": [vars(d) for d in self.disks],
            "shared": self.shared,
            "copy_bytes": self.copy_bytes,
            "problems": self.problems,
            "warnings": self.warnings,
            "cpu_baseline": self.cpu_baseline,
            "reservations": [vars(r) for r in self.reservations],
            "snapshots": self.snapshots,
            "current_snapshot": self.current_snapshot,
            "layers": [vars(layer) for layer in self.layers],
        }


def preflight(
    src: Connection, dst: Connection, name: str, *, offline: bool | None = None
) -> Preflight:
    """Check that VM ``name`` can move from ``src`` to ``dst``; ``offline`` None: by its state."""
    dom = vms.lookup(src, name)
    with libvirt_errors(f"reading VM {name}"):
        running = bool(dom.isActive())
        domain = Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
        uuid = dom.UUIDString()
        memory = int(dom.info()[2]) * 1024
    live = running if offline is None else not offline
    check = Preflight(name, uuid, live, memory)
    if live and not running:
        check.problems.append(f"VM {name} is shut off: migrate it offline (--offline)")
    if not live and running:
        check.problems.append(f"VM {name} runs: shut it down first, or migrate it live")
    read_snapshots(src, dom, check)
    _check_clash(dst, name, uuid, check)
    _check_devices(domain, check)
    _check_networks(dst, domain, check)
    check.reservations = reservations_of(src, domain)
    check.problems.extend(conflicts(dst, check.reservations))
    _check_cpu_and_machine(src, dst, domain, check)
    _check_disks(src, dst, domain, check)
    plan_layers(src, dst, dom, check)
    if live:
        from kvmgr.host.memory import node_memory

        free = node_memory(dst).available  # all NUMA nodes, page cache counted as available
        if free < memory + MEMORY_MARGIN:
            check.problems.append(
                f"the destination has {free // MIB} MiB available, the VM needs "
                f"{memory // MIB} MiB (+{MEMORY_MARGIN // MIB} MiB for QEMU)"
            )
    return check


def _check_clash(dst: Connection, name: str, uuid: str, check: Preflight) -> None:
    for what, find in (
        ("name", dst.virconn.lookupByName),
        ("UUID", dst.virconn.lookupByUUIDString),
    ):
        key = name if what == "name" else uuid
        try:
            other = find(key)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            continue
        check.problems.append(f"the destination already has a VM with this {what} ({other.name()})")


def _check_devices(domain: Domain, check: Preflight) -> None:
    devices = domain.element.find("devices")
    if devices is None:
        return
    for tag, what in _UNMOVABLE.items():
        if devices.find(tag) is not None:
            check.problems.append(f"the VM has {what} (<{tag}>), which cannot migrate")


def _check_networks(dst: Connection, domain: Domain, check: Preflight) -> None:
    bridges = None
    for nic in domain.devices.interfaces:
        if nic.type == "network" and nic.source_network:
            try:
                net = dst.virconn.networkLookupByName(nic.source_network)
                active = bool(net.isActive())
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise
                check.problems.append(
                    f"network {nic.source_network!r} (NIC {nic.mac}) does not exist on the "
                    "destination: define it there first"
                )
                continue
            if not active:
                check.problems.append(
                    f"network {nic.source_network!r} is not active on the destination: start it"
                )
        elif nic.type == "bridge" and nic.source_bridge:
            if bridges is None:
                bridges = _host_interfaces(dst)
            if nic.source_bridge not in bridges:
                check.problems.append(
                    f"bridge {nic.source_bridge!r} (NIC {nic.mac}) does not exist on the "
                    "destination: create it there ('kvmgr host bridge')"
                )
        elif nic.type == "direct" and nic.source_dev:
            if bridges is None:
                bridges = _host_interfaces(dst)
            if nic.source_dev not in bridges:
                check.problems.append(f"interface {nic.source_dev!r} does not exist there")


def _host_interfaces(conn: Connection) -> set[str]:
    """Names of the host's network interfaces, from its node devices (libvirt's udev view)."""
    with libvirt_errors("listing the destination's network interfaces"):
        devices = conn.virconn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET)
    names: set[str] = set()
    for device in devices:
        node = parse_xml(device.XMLDesc(0), what="node device XML")
        names.update(n.text for n in node.iterfind("./capability/interface") if n.text)
    return names


def _check_cpu_and_machine(
    src: Connection, dst: Connection, domain: Domain, check: Preflight
) -> None:
    arch, machine, virt = domain.os.arch, domain.os.machine, domain.type
    try:
        caps = dst.virconn.getDomainCapabilities(None, arch, machine, virt, 0)
    except libvirt.libvirtError as err:
        check.problems.append(
            f"the destination cannot run a {virt} guest of machine type {machine} ({arch}): "
            f"{err.get_error_message()}"
        )
        return
    _check_firmware(caps, domain, check)
    cpu = domain.element.find("cpu")
    if cpu is None:
        return  # the hypervisor's default CPU model, the same on every host of one QEMU
    if cpu.get("mode") == "host-passthrough":
        check.warnings.append(
            "the CPU is host-passthrough: it migrates only between hosts with identical CPUs"
        )
        return
    if cpu.find("model") is None:
        return
    xml = etree.tostring(cpu, encoding="unicode")
    try:
        result = dst.virconn.compareHypervisorCPU(None, arch, machine, virt, xml, 0)
    except libvirt.libvirtError as err:
        check.warnings.append(f"the guest CPU could not be compared there: {err}")
        return
    if result == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
        model = cpu.findtext("model") or "?"
        check.cpu_baseline = baseline_cpu(src, dst, arch, machine, virt)
        fix = "give the VM a CPU both hosts run"
        if check.cpu_baseline is not None:
            both = parse_xml(check.cpu_baseline)
            features = len(both.findall("feature"))
            fix = (
                f"both hosts run CPU model {both.findtext('model')} with {features} feature(s) "
                "(libvirt's baseline of the two, in the report's cpu_baseline): put it in the "
                f"VM's <cpu> ('kvmgr vm edit {check.name}'), restart the VM, then move it"
            )
        check.problems.append(f"the guest CPU ({model}) cannot run on the destination: {fix}")


def baseline_cpu(
    src: Connection, dst: Connection, arch: str | None, machine: str | None, virt: str | None
) -> str | None:
    """The most capable CPU both hosts run, as ``<cpu mode='custom'>`` XML: libvirt's
    ``baselineHypervisorCPU`` of each host's host-model CPU, migratable features only.  None
    when a host offers no host-model CPU or libvirt cannot compute one."""
    host_cpus = []
    try:
        for conn in (src, dst):
            caps = parse_xml(conn.virconn.getDomainCapabilities(None, arch, machine, virt, 0))
            mode = caps.find("cpu/mode[@name='host-model']")
            if mode is None or mode.get("supported") != "yes":
                return None
            cpu = etree.Element("cpu", mode="custom", match="exact")
            cpu.extend(copy.deepcopy(child) for child in mode)
            host_cpus.append(etree.tostring(cpu, encoding="unicode"))
        flags = libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE
        answer = src.virconn.baselineHypervisorCPU(None, arch, machine, virt, host_cpus, flags)
    except libvirt.libvirtError:
        return None  # the refusal stands without an offer
    return str(answer)


def _check_firmware(caps_xml: str, domain: Domain, check: Preflight) -> None:
    """A firmware file the VM names (UEFI's loader) must be one the destination offers."""
    loader = domain.element.findtext("os/loader")
    if not loader:
        return
    caps = parse_xml(caps_xml, what="domain capabilities")
    offered = {node.text for node in caps.iterfind("./os/loader/value") if node.text}
    if loader not in offered:
        known = ", ".join(sorted(offered)) or "none"
        check.problems.append(
            f"the firmware {loader} is not among the destination's ({known}): install it there"
        )


def _check_disks(src: Connection, dst: Connection, domain: Domain, check: Preflight) -> None:
    for disk in domain.devices.disks:
        path = disk.source_file or disk.source_dev
        if disk.type == "network":
            check.warnings.append(f"disk {disk.target_dev} is on network storage: not copied")
            continue
        if not path:
            continue  # an empty CD-ROM drive
        if disk.readonly or disk.device in ("cdrom", "floppy") or disk.shareable:
            _check_shared(dst, disk, path, check)
            continue
        _check_copied(src, dst, disk, path, check)


def _check_shared(dst: Connection, disk: Disk, path: str, check: Preflight) -> None:
    check.shared.append(path)
    try:
        dst.virconn.storageVolLookupByPath(path)
    except libvirt.libvirtError:
        check.warnings.append(
            f"{disk.target_dev} ({path}) is not copied (read-only or shared) and is in no pool "
            "of the destination: it must exist there at the same path"
        )


def _check_copied(
    src: Connection, dst: Connection, disk: Disk, path: str, check: Preflight
) -> None:
    try:
        vol = src.virconn.storageVolLookupByPath(path)
        pool = vol.storagePoolLookupByVolume()
    except libvirt.libvirtError:
        check.problems.append(
            f"disk {disk.target_dev} ({path}) is in no storage pool of the source: kvmgr copies "
            "pool volumes only (put its directory in a pool)"
        )
        return
    with libvirt_errors(f"reading volume {path}"):
        _kind, capacity, allocation = vol.info()
        from kvmgr.xml.storage import StorageVolume

        spec = StorageVolume.from_xml(vol.XMLDesc(0))
    copy = DiskCopy(
        target=disk.target_dev or "?",
        source_path=path,
        pool=pool.name(),
        volume=vol.name(),
        capacity=int(capacity),
        allocation=int(allocation),
        fmt=spec.target_format or disk.driver_type or "raw",
        backing=spec.backing_path,
    )
    check.disks.append(copy)
    if copy.backing and check.keeps_chains:
        pass  # the images under it move too (migration_snapshots.plan_layers)
    elif copy.backing and not check.live:
        try:
            dst.virconn.storageVolLookupByPath(copy.backing)
        except libvirt.libvirtError:
            check.problems.append(
                f"disk {copy.target} is a linked clone of {copy.backing}, which the destination "
                "lacks: migrate it live (the copy is flattened) or copy the base there first"
            )
    elif copy.backing:
        check.warnings.append(
            f"disk {copy.target} is a linked clone of {copy.backing}: the destination gets a "
            "flattened copy (base and overlay in one image)"
        )
    _check_target_pool(dst, copy, check)


def _check_target_pool(dst: Connection, copy: DiskCopy, check: Preflight) -> None:
    try:
        pool = dst.virconn.storagePoolLookupByName(copy.pool)
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        check.problems.append(
            f"pool {copy.pool!r} (disk {copy.target}) does not exist on the destination: "
            "create it there"
        )
        return
    with libvirt_errors(f"reading pool {copy.pool} on the destination"):
        if not pool.isActive():
            check.problems.append(f"pool {copy.pool!r} is not active on the destination")
            return
        pool.refresh(0)
        available = int(pool.info()[3])
        names = set(pool.listVolumes())
    if copy.volume in names:
        check.problems.append(
            f"pool {copy.pool!r} on the destination already has a volume {copy.volume!r}"
        )
    needed = sum(d.allocation for d in check.disks if d.pool == copy.pool)
    if needed > available:
        check.problems.append(
            f"pool {copy.pool!r} on the destination has {available // MIB} MiB free; the disks "
            f"to copy there use {needed // MIB} MiB"
        )
