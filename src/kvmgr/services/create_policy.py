"""What a new VM gets: the request types, the command-line options, and the definition built.

This is where VM creation policy lives: which machine type, bus, NIC model and firmware a guest
gets, from its OS profile (osinfo-db) and the domain type the host supports.  Making the volumes
and the VM from it, with its journal, is :mod:`kvmgr.services.create`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmgr import __version__
from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, Unsupported, libvirt_errors
from kvmgr.names import validate_name
from kvmgr.osinfo import OSProfile
from kvmgr.services.storage import VolumeRef
from kvmgr.services.storage_pools import DEFAULT_POOL
from kvmgr.units import parse_size
from kvmgr.xml.capabilities import DomainCapabilities
from kvmgr.xml.domain import (
    TPM,
    Channel,
    Console,
    Controller,
    Disk,
    Domain,
    FirmwareFeature,
    Graphics,
    Input,
    Interface,
    Serial,
    Video,
)

WAIT_MODES = ("ready", "ip", "none")
GRAPHICS_MODES = ("vnc", "none")
FIRMWARES = ("bios", "uefi")
_MAC_RE = re.compile(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}")
# PCIe root ports on q35: every PCIe device takes one, and hot-plugging a disk or NIC later needs a
# free one.  virt-install gives 14 whatever the VM has; each port costs ~30 ms of boot under TCG
# (14 -> 4 ports: ~0.3 s of ~6.9 s of guest CPU, docs/BENCHMARKS.md), so the VM gets the ports its
# devices take plus HOTPLUG_PORTS free ones; libvirt fills them in order.
HOTPLUG_PORTS = 4
# The default memory ceiling is this many times the memory (``default_ceilings``).  Booting the
# 256 MiB demo guest from its ISO with a 512 MiB or 1 GiB ceiling, or 8 or 16 possible vCPUs,
# cost no measurable boot time under TCG, nor QEMU memory at boot (docs/BENCHMARKS.md).  Not
# free everywhere: the guest inflates its balloon to hand the room back, and the demo cloud
# image spent 16.0/15.0 s of QEMU CPU to ready with the room against 12.2/14.0 s without (load
# 10-13, issue 13's bench).  So installers boot without it (services/installs.py).
MEMORY_ROOM = 2


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
    #: Edits of the definition before it is defined: direct kernel boot for unattended installs,
    #: the cloud-init seed (kvmgr.services.installs, kvmgr.services.cloud_vms).
    customize: list[Callable[[Domain], None]] = field(default_factory=list)


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
    check_nic_model(request.model)
    if request.mac and not _MAC_RE.fullmatch(request.mac):
        raise InvalidInput(
            f"MAC address {request.mac!r} is not valid", hint="use e.g. 52:54:00:12:34:56"
        )
    return request


def check_nic_model(model: str | None) -> None:
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


# ------------------------------------------------------------ ceilings
@dataclass(frozen=True)
class Ceilings:
    """How far a VM can grow while it runs: its maximum vCPUs and memory (bytes)."""

    vcpus: int
    memory: int


def default_ceilings(
    *,
    vcpus: int,
    memory: int,
    host_cpus: int,
    host_memory: int,
    cpu_hotplug: bool,
    balloon: bool,
) -> Ceilings:
    """The ceilings a new VM gets when ``--max-vcpus``/``--max-memory`` are not given.

    Raising a ceiling needs a restart, so a VM gets room to grow live (``vm set``):

    - **vCPUs**: up to the host's CPU count (more vCPUs than host CPUs only take turns on
      them), never below ``vcpus``.  A guest for the legacy ``pc`` machine gets ``vcpus``:
      the old OSes that need it do not take hot-plugged CPUs.
    - **memory**: ``MEMORY_ROOM`` times ``memory``, at most the host's total memory, never
      below ``memory``.  The room is given through the virtio balloon: the guest boots with
      the ceiling and the balloon driver hands back what is above ``memory`` (MemTotal in the
      guest follows every ``vm set --memory``, up and down).  A guest without a virtio
      balloon gets ``memory``: it would keep the whole ceiling.
    """
    max_vcpus = max(vcpus, host_cpus) if cpu_hotplug else vcpus
    max_memory = max(memory, min(MEMORY_ROOM * memory, host_memory)) if balloon else memory
    return Ceilings(vcpus=max_vcpus, memory=max_memory)


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
    # Secure Boot needs SMM, which QEMU gives only on q35
    q35 = profile.q35 or profile.tpm_secure_boot
    domain = Domain()
    domain.type = domain_type
    domain.name = spec.name
    meta = domain.kvmgr_metadata(create=True)
    assert meta is not None
    meta.created_by = f"kvmgr {__version__}"
    meta.os_id = profile.short_id
    meta.owned_volumes = [volume.path for volume in volumes]
    ceilings = default_ceilings(
        vcpus=vcpus,
        memory=memory,
        host_cpus=_host_cpus(conn),
        host_memory=_host_memory(conn),
        cpu_hotplug=q35,
        balloon=profile.virtio,
    )
    max_memory = spec.max_memory or ceilings.memory
    domain.memory_bytes = max_memory
    domain.current_memory_bytes = memory
    max_vcpus = spec.max_vcpus or ceilings.vcpus
    domain.vcpus = max_vcpus
    if max_vcpus != vcpus:
        domain.vcpus_current = vcpus
    domain.os.type = "hvm"
    domain.os.arch = "x86_64"
    domain.os.machine = "q35" if q35 else "pc"
    domain.features.acpi = True
    domain.features.apic = True
    if profile.tpm_secure_boot:
        # Whatever --firmware says (its default is bios, so a choice cannot be told from it):
        # Setup refuses this OS on BIOS.
        _add_secure_boot_and_tpm(domain)
    elif spec.firmware == "uefi":
        domain.os.firmware = "efi"
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


def _host_memory(conn: Connection) -> int:
    from kvmgr.host.memory import node_memory

    return node_memory(conn).total  # all NUMA nodes: getInfo may report one


def check_host_support(
    conn: Connection, spec: VMSpec, profile: OSProfile, domain_type: str
) -> None:
    """Refuse, before anything is made, a VM whose firmware or TPM the host cannot give."""
    if domain_type == "test":  # libvirt's test driver has no domain capabilities
        return
    if spec.firmware != "uefi" and not profile.tpm_secure_boot:
        return
    machine = "q35" if profile.q35 or profile.tpm_secure_boot else "pc"
    with libvirt_errors("reading domain capabilities"):
        text = conn.virconn.getDomainCapabilities(None, "x86_64", machine, domain_type, 0)
    check_firmware_caps(DomainCapabilities.from_xml(text), profile)


def check_firmware_caps(caps: DomainCapabilities, profile: OSProfile) -> None:
    """What :func:`check_host_support` checks, on the daemon's domain capabilities."""
    if "efi" not in caps.firmware:
        hint = "install OVMF (apt install ovmf / dnf install edk2-ovmf)"
        raise Unsupported(
            "UEFI firmware is not installed on this host",
            hint=hint if profile.tpm_secure_boot else f"{hint} or use --firmware bios",
        )
    if not profile.tpm_secure_boot:
        return
    if not caps.secure_boot:
        raise Unsupported(
            f"{profile.name} needs UEFI Secure Boot and this host's OVMF has no Secure Boot build",
            hint="install OVMF with Secure Boot (apt install ovmf / dnf install edk2-ovmf)",
        )
    # Asked of libvirt rather than looked for on PATH: the daemon (perhaps on another host)
    # is what must find swtpm, and it lists the emulator backend only when it does.
    if not caps.tpm_backend("emulator", "2.0"):
        raise Unsupported(
            f"{profile.name} needs a TPM 2.0 and this host cannot emulate one",
            hint="install swtpm on the VM's host (apt install swtpm swtpm-tools / "
            "dnf install swtpm swtpm-tools)",
        )


def _add_secure_boot_and_tpm(domain: Domain) -> None:
    """UEFI with Secure Boot on and Microsoft's keys enrolled, chosen by libvirt's firmware
    auto-selection (so the host's own OVMF paths are not written into the definition), SMM
    (without it the guest could rewrite the variable store and Secure Boot means nothing),
    and a TPM 2.0 that libvirt emulates with swtpm; its state lives with the daemon
    (/var/lib/libvirt/swtpm/UUID) and goes with the VM on undefine."""
    domain.os.firmware = "efi"
    for name in ("secure-boot", "enrolled-keys"):
        feature = FirmwareFeature()
        feature.enabled, feature.name = True, name
        domain.os.firmware_features.append(feature)
    domain.features.smm_state = "on"
    tpm = TPM()
    tpm.model, tpm.backend_type, tpm.backend_version = "tpm-crb", "emulator", "2.0"
    domain.devices.tpms.append(tpm)


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
