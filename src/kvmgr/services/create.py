"""Creating a VM: turn a request into volumes and a libvirt definition, start it, wait for it.

This is where VM creation policy lives: which machine type, bus, NIC model and firmware a guest
gets, from its OS profile (osinfo-db) and the domain type the host supports.  Each step that makes
something registers how to undo it; when a later step fails, everything made so far is removed
in reverse order, so a failed create leaves nothing behind.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import libvirt

from kvmgr import __version__
from kvmgr.connect import Connection
from kvmgr.errors import (
    AlreadyExists,
    InvalidInput,
    KvmgrError,
    NotFound,
    Unsupported,
    libvirt_errors,
)
from kvmgr.names import validate_name
from kvmgr.osinfo import OSProfile
from kvmgr.services import vms
from kvmgr.services.storage import DEFAULT_POOL, VolumeRef, create_volume, delete_volume_by_path
from kvmgr.units import GIB, MIB, format_size, parse_size
from kvmgr.xml.domain import (
    Channel,
    Console,
    Controller,
    Disk,
    Domain,
    Graphics,
    Input,
    Interface,
    Serial,
    Video,
)

Progress = Callable[[str], None]

WAIT_MODES = ("ready", "ip", "none")
GRAPHICS_MODES = ("vnc", "none")
FIRMWARES = ("bios", "uefi")
READY_MARKER = "KVMGR-READY"
_MAC_RE = re.compile(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}")
# PCIe root ports on q35: every PCIe device takes one, and hot-plugging a disk or NIC later needs a
# free one.  virt-install gives 14 whatever the VM has; each port costs ~30 ms of boot under TCG
# (14 -> 4 ports: ~0.3 s of ~6.9 s of guest CPU, docs/BENCHMARKS.md), so the VM gets the ports its
# devices take plus HOTPLUG_PORTS free ones; libvirt fills them in order.
HOTPLUG_PORTS = 4
_MIN_MEMORY = 64 * MIB


# ------------------------------------------------------------ requests
@dataclass
class DiskRequest:
    """A new volume (``size``) in ``pool``, or an existing ``path`` attached as it is."""

    size: int | None = None
    pool: str = DEFAULT_POOL
    format: str = "qcow2"
    path: str | None = None


@dataclass
class NicRequest:
    """A NIC on a libvirt network (``kind='network'``) or a host bridge (``kind='bridge'``)."""

    kind: str = "network"
    source: str = "default"
    model: str | None = None
    mac: str | None = None


@dataclass
class VMSpec:
    """Everything ``kvmgr vm create`` accepts; ``None`` means "what the OS recommends"."""

    name: str
    iso: str | None = None
    os: str = "auto"
    memory: int | None = None
    max_memory: int | None = None
    vcpus: int | None = None
    max_vcpus: int | None = None
    disks: list[DiskRequest] = field(default_factory=lambda: [DiskRequest()])
    nics: list[NicRequest] = field(default_factory=lambda: [NicRequest()])
    graphics: str = "vnc"
    firmware: str = "bios"
    start: bool = True
    wait: str = "none"
    wait_timeout: float = 300.0


@dataclass
class CreateResult:
    name: str
    uuid: str
    domain_type: str
    domain_type_reason: str
    os_id: str
    os_name: str
    memory: int
    vcpus: int
    volumes: list[str]
    state: str
    ip: str | None = None
    seconds: float = 0.0


# ------------------------------------------------------------ option parsing
def parse_disk_option(text: str) -> DiskRequest | None:
    """``20G`` | ``pool=P,size=S,format=qcow2`` | ``path=/x.img`` | ``none``."""
    text = text.strip()
    if text == "none":
        return None
    if "=" not in text:
        return DiskRequest(size=parse_size(text, what="disk size", default_unit="G"))
    fields = _key_values(text, allowed={"pool", "size", "format", "path"}, what="--disk")
    request = DiskRequest(
        pool=fields.get("pool", DEFAULT_POOL), format=fields.get("format", "qcow2")
    )
    if "path" in fields:
        if "size" in fields:
            raise InvalidInput("--disk takes either path= (existing disk) or size=, not both")
        request.path = fields["path"]
    elif "size" in fields:
        request.size = parse_size(fields["size"], what="disk size", default_unit="G")
    if request.format not in ("qcow2", "raw"):
        raise InvalidInput(
            f"disk format {request.format!r} is not supported", hint="use qcow2 or raw"
        )
    return request


def parse_network_option(text: str) -> NicRequest | None:
    """``default`` | ``NAME`` | ``network=NAME`` | ``bridge=br0`` | ``none``; ``,model=,mac=``."""
    text = text.strip()
    if text == "none":
        return None
    parts = text.split(",")
    head = parts[0]
    request = NicRequest()
    if head.startswith("bridge="):
        request.kind, request.source = "bridge", head.partition("=")[2]
    elif head.startswith("network="):
        request.source = head.partition("=")[2]
    elif "=" not in head:
        request.source = head
    else:
        parts = ["", *parts]
    extra = _key_values(",".join(parts[1:]), allowed={"model", "mac"}, what="--network")
    request.model = extra.get("model")
    request.mac = extra.get("mac")
    validate_name(request.source, what="network" if request.kind == "network" else "bridge")
    _check_nic_model(request.model)
    if request.mac and not _MAC_RE.fullmatch(request.mac):
        raise InvalidInput(
            f"MAC address {request.mac!r} is not valid", hint="use e.g. 52:54:00:12:34:56"
        )
    return request


def _check_nic_model(model: str | None) -> None:
    # libvirt defines any model string; QEMU refuses an unknown one only when the VM first starts
    if model is None:
        return
    from kvmgr.services.resources import NIC_MODELS  # ~13 ms; only when a model is given

    if model not in NIC_MODELS:
        raise InvalidInput(
            f"NIC model {model!r} is not supported", hint=f"use {', '.join(NIC_MODELS)}"
        )


def _key_values(text: str, *, allowed: set[str], what: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in allowed or not value:
            raise InvalidInput(
                f"{what} option {item!r} is not understood",
                hint=f"use key=value with keys {', '.join(sorted(allowed))}",
            )
        fields[key] = value
    return fields


# ------------------------------------------------------------ rollback
class _Undo:
    """A stack of undo actions run in reverse when creation fails part way."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, action: Callable[[], object]) -> None:
        self._actions.append((what, action))

    def run(self) -> list[str]:
        problems = []
        for what, action in reversed(self._actions):
            try:
                action()
            except (libvirt.libvirtError, KvmgrError, OSError) as err:
                problems.append(f"{what}: {err}")
        self._actions.clear()
        return problems


@contextmanager
def _rollback_on_error() -> Iterator[_Undo]:
    undo = _Undo()
    try:
        yield undo
    except BaseException as err:
        problems = undo.run()
        if problems and isinstance(err, KvmgrError):
            err.message += "; cleaning up also failed: " + "; ".join(problems)
        raise


# ------------------------------------------------------------ create
def create_vm(conn: Connection, spec: VMSpec, progress: Progress | None = None) -> CreateResult:
    """Create (and by default start) a VM; on failure nothing it made is left behind."""
    began = time.monotonic()
    say = progress or (lambda _message: None)
    _validate_request(conn, spec)
    iso_path = _resolve_iso(conn, spec.iso) if spec.iso else None
    profile = _choose_profile(spec.os, iso_path)
    memory = profile.recommended_memory if spec.memory is None else spec.memory
    vcpus = profile.recommended_vcpus if spec.vcpus is None else spec.vcpus
    _check_resources(conn, memory, spec.max_memory, vcpus, spec.max_vcpus)
    choice = conn.domain_type()
    say(f"domain type {choice.domain_type}: {choice.reason}")
    disks = [_sized(request, profile.recommended_disk) for request in spec.disks]
    with _rollback_on_error() as undo:
        volumes = _create_volumes(conn, spec.name, disks, undo, say)
        domain = build_domain(
            conn, spec, profile, choice.domain_type, memory, vcpus, iso_path, disks, volumes
        )
        say(f"defining VM {spec.name}")
        with libvirt_errors(f"defining VM {spec.name}"):
            dom = conn.virconn.defineXML(domain.to_xml())
        undo.push(f"undefining VM {spec.name}", lambda: _undefine(dom))
        result = CreateResult(
            name=spec.name,
            uuid=dom.UUIDString(),
            domain_type=choice.domain_type,
            domain_type_reason=choice.reason,
            os_id=profile.short_id,
            os_name=profile.name,
            memory=memory,
            vcpus=vcpus,
            volumes=[volume.path for volume in volumes],
            state="shut off",
        )
        if spec.start:
            say(f"starting VM {spec.name}")
            result.ip = _start_and_wait(conn, dom, spec, undo, say)
            result.state = vms.STATE_NAMES[vms.state_of(dom)]
    result.seconds = time.monotonic() - began
    return result


def _validate_request(conn: Connection, spec: VMSpec) -> None:
    validate_name(spec.name, what="VM name")
    if spec.wait not in WAIT_MODES:
        raise InvalidInput(f"--wait {spec.wait!r} is not known", hint="use ready, ip or none")
    if spec.graphics not in GRAPHICS_MODES:
        raise InvalidInput(f"--graphics {spec.graphics!r} is not known", hint="use vnc or none")
    if spec.firmware not in FIRMWARES:
        raise InvalidInput(f"--firmware {spec.firmware!r} is not known", hint="use bios or uefi")
    if spec.wait_timeout <= 0:
        raise InvalidInput(
            f"--wait-timeout {spec.wait_timeout:g} must be greater than zero", hint="e.g. 300"
        )
    if spec.wait != "none" and not spec.start:
        raise InvalidInput(
            "--wait needs the VM to start", hint="drop --no-start or use --wait none"
        )
    if vms.exists(conn, spec.name):
        raise AlreadyExists(
            f"a VM named {spec.name!r} already exists",
            hint="choose another name or delete it first",
        )
    for nic in spec.nics:
        _check_nic_model(nic.model)
        if nic.kind == "network":
            _require_network(conn, nic.source)
    for disk in spec.disks:
        if disk.path and not _path_known(conn, disk.path):
            raise NotFound(
                f"disk {disk.path!r} does not exist", hint="give an existing file or volume path"
            )


def _require_network(conn: Connection, name: str) -> None:
    try:
        net = conn.virconn.networkLookupByName(name)
    except libvirt.libvirtError as err:
        raise NotFound(
            f"network {name!r} does not exist", hint="'kvmgr net list' shows the networks"
        ) from err
    if not net.isActive():
        raise InvalidInput(
            f"network {name!r} is not running", hint=f"start it with 'kvmgr net start {name}'"
        )


def _path_known(conn: Connection, path: str) -> bool:
    from kvmgr.services.storage import find_volume_by_path

    return find_volume_by_path(conn, path) is not None or os.path.exists(path)


def _resolve_iso(conn: Connection, ref: str) -> str:
    """An imported ISO's name or a host path to an .iso file -> the path the VM uses."""
    try:
        from kvmgr.services.isos import resolve_iso
    except ImportError:  # the ISO library is optional for this step: accept existing paths
        if os.path.isfile(ref):
            return os.path.abspath(ref)
        raise NotFound(
            f"ISO {ref!r} does not exist", hint="give the path of an .iso file"
        ) from None
    return resolve_iso(conn, ref)


def _choose_profile(os_id: str, iso_path: str | None) -> OSProfile:
    from kvmgr.osinfo import detect_iso, generic_profile, get_profile

    if os_id != "auto":
        return get_profile(os_id)
    if iso_path and os.path.exists(iso_path):
        return detect_iso(iso_path).profile
    return generic_profile()


def _check_resources(
    conn: Connection, memory: int, max_memory: int | None, vcpus: int, max_vcpus: int | None
) -> None:
    with libvirt_errors("reading the host's resources"):
        _model, host_mib, host_cpus, *_rest = conn.virconn.getInfo()
    host_memory = host_mib * MIB
    for what, value in (("memory", memory), ("--max-memory", max_memory or memory)):
        if value < _MIN_MEMORY:
            raise InvalidInput(
                f"{what} {format_size(value)} is too small", hint="give at least 64M"
            )
        if value > host_memory:
            raise InvalidInput(
                f"{what} {format_size(value)} is more than this host has "
                f"({format_size(host_memory)})",
                hint="give less memory",
            )
    if max_memory is not None and max_memory < memory:
        raise InvalidInput("--max-memory must not be below --memory")
    if vcpus < 1:
        raise InvalidInput("--vcpus must be at least 1")
    if max_vcpus is not None and max_vcpus < vcpus:
        raise InvalidInput("--max-vcpus must not be below --vcpus")
    ceiling = max_vcpus or vcpus
    if ceiling > max(host_cpus, 1) * 8:
        raise InvalidInput(f"{ceiling} vCPUs is far more than this host's {host_cpus} CPUs")


def _sized(request: DiskRequest, recommended: int) -> DiskRequest:
    if request.path is None and request.size is None:
        return DiskRequest(size=recommended, pool=request.pool, format=request.format)
    return request


def _create_volumes(
    conn: Connection, name: str, disks: list[DiskRequest], undo: _Undo, say: Progress
) -> list[VolumeRef]:
    volumes = []
    for index, request in enumerate(disks):
        if request.path is not None or request.size is None:
            continue
        suffix = "" if index == 0 else f"-{index}"
        extension = ".qcow2" if request.format == "qcow2" else ".img"
        vol_name = f"{name}{suffix}{extension}"
        say(
            f"creating {format_size(request.size)} {request.format} disk {vol_name}"
            f" in pool {request.pool}"
        )
        volume = create_volume(conn, request.pool, vol_name, request.size, request.format)
        undo.push(
            f"deleting volume {volume.path}",
            functools.partial(delete_volume_by_path, conn, volume.path),
        )
        volumes.append(volume)
    return volumes


def _undefine(dom: libvirt.virDomain) -> None:
    if dom.isActive():
        dom.destroy()
    vms.undefine(dom)


# ------------------------------------------------------------ policy
def build_domain(
    conn: Connection,
    spec: VMSpec,
    profile: OSProfile,
    domain_type: str,
    memory: int,
    vcpus: int,
    iso_path: str | None,
    disks: list[DiskRequest],
    volumes: list[VolumeRef],
) -> Domain:
    """The libvirt definition for ``spec``: modern virtio devices where the OS has drivers."""
    q35 = profile.q35
    domain = Domain()
    domain.type = domain_type
    domain.name = spec.name
    meta = domain.kvmgr_metadata(create=True)
    assert meta is not None
    meta.created_by = f"kvmgr {__version__}"
    meta.os_id = profile.short_id
    meta.owned_volumes = [volume.path for volume in volumes]
    max_memory = spec.max_memory or memory
    domain.memory_bytes = max_memory
    domain.current_memory_bytes = memory
    # A modern guest can take hot-plugged vCPUs up to the host's count; an old one cannot.
    max_vcpus = spec.max_vcpus or (max(vcpus, _host_cpus(conn)) if q35 else vcpus)
    domain.vcpus = max_vcpus
    if max_vcpus != vcpus:
        domain.vcpus_current = vcpus
    domain.os.type = "hvm"
    domain.os.arch = "x86_64"
    domain.os.machine = "q35" if q35 else "pc"
    if spec.firmware == "uefi":
        _require_uefi(conn, domain_type)
        domain.os.firmware = "efi"
    domain.features.acpi = True
    domain.features.apic = True
    if domain_type == "kvm":
        domain.cpu.mode = "host-passthrough"
        if profile.family == "winnt":
            _add_hyperv_enlightenments(domain)
    domain.clock_offset = "localtime" if profile.family == "winnt" else "utc"
    domain.on_poweroff, domain.on_reboot, domain.on_crash = "destroy", "restart", "destroy"
    _add_disks(domain, profile, q35, iso_path, disks, volumes)
    _add_nics(domain, profile, spec.nics)
    _add_consoles(domain, agent_channel=profile.virtio or q35)
    _add_graphics(domain, profile, spec.graphics)
    balloon = domain.devices.memballoon
    balloon.model = "virtio" if profile.virtio else "none"
    if profile.virtio:
        balloon.stats_period = 5  # so 'kvmgr vm stats' sees guest memory use
    if q35:
        _add_root_ports(domain)
    return domain


def root_ports_needed(domain: Domain) -> int:
    """Ports for the PCIe devices libvirt will place, plus HOTPLUG_PORTS free ones."""
    devices = domain.devices
    taken = sum(1 for disk in devices.disks if disk.target_bus == "virtio")
    taken += len(devices.interfaces) + len(devices.rngs)  # q35 NICs are PCIe (virtio, e1000e)
    taken += 1 if devices.memballoon.model == "virtio" else 0
    taken += 1 if devices.channels else 0  # the agent channel's virtio-serial controller
    taken += 1  # the USB controller (qemu-xhci) libvirt adds to every q35 VM
    return taken + HOTPLUG_PORTS


def _add_root_ports(domain: Domain) -> None:
    root = Controller()
    root.type, root.index, root.model = "pci", 0, "pcie-root"
    domain.devices.controllers.append(root)
    for index in range(1, root_ports_needed(domain) + 1):
        port = Controller()
        port.type, port.index, port.model = "pci", index, "pcie-root-port"
        domain.devices.controllers.append(port)


def _host_cpus(conn: Connection) -> int:
    with libvirt_errors("reading the host's CPUs"):
        return int(conn.virconn.getInfo()[2])


def _require_uefi(conn: Connection, domain_type: str) -> None:
    if domain_type == "test":
        return
    with libvirt_errors("reading domain capabilities"):
        caps = conn.virconn.getDomainCapabilities(None, None, None, domain_type, 0)
    if "efi" not in caps:
        raise Unsupported(
            "UEFI firmware is not installed on this host",
            hint="install OVMF (apt install ovmf / dnf install edk2-ovmf) or use --firmware bios",
        )


def _add_disks(
    domain: Domain,
    profile: OSProfile,
    q35: bool,
    iso_path: str | None,
    disks: list[DiskRequest],
    volumes: list[VolumeRef],
) -> None:
    bus = "virtio" if profile.virtio else ("sata" if q35 else "ide")
    prefix = "vd" if bus == "virtio" else ("sd" if bus == "sata" else "hd")
    made = iter(volumes)
    boot_order = 1
    for index, request in enumerate(disks):
        disk = Disk()
        disk.type, disk.device = "file", "disk"
        disk.driver_name = "qemu"
        if request.path is not None:
            disk.source_file = request.path
            disk.driver_type = _guess_format(request.path)
        else:
            volume = next(made)
            disk.source_file = volume.path
            disk.driver_type = volume.format
        disk.driver_discard = "unmap"
        disk.target_dev = f"{prefix}{chr(ord('a') + index)}"
        disk.target_bus = bus
        disk.boot_order = boot_order
        boot_order += 1
        domain.devices.disks.append(disk)
    if iso_path:
        # The disk boots first and the installer second: a blank disk falls through to the ISO,
        # an installed one boots itself, so the finished install never restarts the installer.
        cdrom = Disk()
        cdrom.type, cdrom.device = "file", "cdrom"
        cdrom.driver_name, cdrom.driver_type = "qemu", "raw"
        cdrom.source_file = iso_path
        cdrom_bus = "sata" if q35 else "ide"
        # The next free name on that bus: a far one (sdz) would make libvirt add a controller
        # per six units, and every extra device costs boot time.
        used = {disk.target_dev for disk in domain.devices.disks}
        names = (
            (f"sd{c}" for c in "abcdefghijklmnopqrstuvwxyz")
            if cdrom_bus == "sata"
            else (f"hd{c}" for c in "cdab")
        )
        cdrom.target_dev = next(name for name in names if name not in used)
        cdrom.target_bus = cdrom_bus
        cdrom.readonly = True
        cdrom.boot_order = boot_order
        domain.devices.disks.append(cdrom)


def _guess_format(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return "qcow2" if handle.read(4) == b"QFI\xfb" else "raw"
    except OSError:
        return "qcow2" if path.endswith(".qcow2") else "raw"


def _add_nics(domain: Domain, profile: OSProfile, nics: list[NicRequest]) -> None:
    for request in nics:
        nic = Interface()
        if request.kind == "bridge":
            nic.type, nic.source_bridge = "bridge", request.source
        else:
            nic.type, nic.source_network = "network", request.source
        if request.mac:
            nic.mac = request.mac.lower()
        nic.model = request.model or _nic_model(profile)
        domain.devices.interfaces.append(nic)


def _nic_model(profile: OSProfile) -> str:
    """virtio where the OS has the driver; else an Intel NIC its installer knows: the PCIe
    e1000e for OSes that run on q35, the older e1000 for legacy ones (Windows XP, RHEL 5)."""
    if profile.virtio:
        return "virtio"
    return "e1000e" if profile.q35 else "e1000"


def _add_hyperv_enlightenments(domain: Domain) -> None:
    """What virt-install and virt-manager give Windows on KVM: without them Windows spins on
    locks and polls the APIC, and runs markedly slower."""
    features = domain.features
    features.hyperv_mode = "custom"
    features.hyperv_relaxed = True
    features.hyperv_vapic = True
    features.hyperv_spinlocks = True
    features.hyperv_spinlock_retries = 8191


def _add_consoles(domain: Domain, *, agent_channel: bool) -> None:
    """A serial port with a console on it always; the guest agent's channel where the guest
    can have virtio-serial (the agent is how kvmgr learns IPs on bridged networks)."""
    serial = Serial()
    serial.type = "pty"
    serial.target_port = 0
    domain.devices.serials.append(serial)
    console = Console()
    console.type, console.target_type, console.target_port = "pty", "serial", 0
    domain.devices.consoles.append(console)
    if agent_channel:
        agent = Channel()
        agent.type, agent.target_type = "unix", "virtio"
        agent.target_name = "org.qemu.guest_agent.0"
        domain.devices.channels.append(agent)


def _add_graphics(domain: Domain, profile: OSProfile, mode: str) -> None:
    video = Video()
    if mode == "none":
        video.model_type = "none"
        domain.devices.videos.append(video)
        return
    graphics = Graphics()
    graphics.type = "vnc"
    # A unix socket only: VNC on a TCP port would be reachable by anyone who can reach the host.
    graphics.listen_type = "socket"
    domain.devices.graphics.append(graphics)
    video.model_type = "virtio" if profile.virtio else "vga"
    domain.devices.videos.append(video)
    tablet = Input()
    tablet.type, tablet.bus = "tablet", "usb"
    domain.devices.inputs.append(tablet)


# ------------------------------------------------------------ start and wait
def _start_and_wait(
    conn: Connection, dom: libvirt.virDomain, spec: VMSpec, undo: _Undo, say: Progress
) -> str | None:
    if spec.wait != "ready":
        with libvirt_errors(f"starting VM {spec.name}"):
            dom.create()
        undo.push(f"powering off VM {spec.name}", dom.destroy)
        return _wait_for_ip(conn, dom, spec, say) if spec.wait == "ip" else None
    # Start paused and attach the console before the first instruction runs, so no line the
    # guest prints (the readiness marker included) can be missed.
    with libvirt_errors(f"starting VM {spec.name}"):
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    undo.push(f"powering off VM {spec.name}", dom.destroy)
    from kvmgr.services.console import ConsoleSession

    session = ConsoleSession(conn, spec.name)
    try:
        with libvirt_errors(f"resuming VM {spec.name}"):
            dom.resume()
        say(f"waiting for {spec.name} to be ready (serial console)")
        session.expect(READY_MARKER, timeout=spec.wait_timeout)
    finally:
        session.close()
    return _wait_for_ip(conn, dom, spec, say)


def _wait_for_ip(
    conn: Connection, dom: libvirt.virDomain, spec: VMSpec, say: Progress
) -> str | None:
    from kvmgr.services.networks import discover_ips

    if not spec.nics:
        return None
    say(f"waiting for {spec.name} to get an IP address")
    deadline = time.monotonic() + spec.wait_timeout
    while time.monotonic() < deadline:
        found = discover_ips(conn, dom)
        if found:
            return found[0][1]
        time.sleep(0.5)
    raise KvmgrError(
        f"VM {spec.name!r} got no IP address within {spec.wait_timeout:g} s",
        hint="check the guest's network configuration on its console: 'kvmgr vm console NAME'",
    )


__all__ = [
    "GIB",
    "CreateResult",
    "DiskRequest",
    "NicRequest",
    "VMSpec",
    "build_domain",
    "create_vm",
    "parse_disk_option",
    "parse_network_option",
]
