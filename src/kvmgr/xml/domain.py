"""libvirt domain XML (https://libvirt.org/formatdomain.html) as typed objects.

Only conversion lives here.  Which bus, model or firmware a new VM gets is policy, and policy
lives in the services (``kvmgr.services.create``).
"""

from __future__ import annotations

from lxml import etree

from kvmgr.units import parse_xml_size
from kvmgr.xml.base import ON_OFF, XMLChild, XMLChildList, XMLFlag, XMLObject, XMLProperty

KVMGR_NS = "https://kvmgr.dev/xmlns/kvmgr/1.0"
KVMGR_PREFIX = "kvmgr"


def _q(tag: str) -> str:
    return f"{{{KVMGR_NS}}}{tag}"


class _MemoryMixin:
    """Read and write a memory element in bytes, whatever unit the XML uses."""

    @staticmethod
    def _get_bytes(element: etree._Element, tag: str) -> int | None:
        node = element.find(tag)
        if node is None or not (node.text or "").strip():
            return None
        # libvirt itself always writes KiB, but hand-written files and virt-install may use any
        # unit libvirt accepts; an unknown one is InvalidInput, not a KeyError.
        return parse_xml_size(node.text, node.get("unit"), what=f"<{tag}>", default="KiB")

    @staticmethod
    def _set_bytes(element: etree._Element, tag: str, value: int | None) -> None:
        node = element.find(tag)
        if value is None:
            if node is not None:
                element.remove(node)
            return
        if node is None:
            node = etree.SubElement(element, tag)
        node.set("unit", "KiB")
        node.text = str(-(-value // 1024))


class Boot(XMLObject):
    TAG = "boot"
    dev = XMLProperty("./@dev")


class FirmwareFeature(XMLObject):
    """What libvirt's firmware auto-selection must (or must not) pick: ``secure-boot``,
    ``enrolled-keys`` (the Microsoft keys already in the variable store)."""

    TAG = "feature"
    name = XMLProperty("./@name")
    enabled = XMLProperty("./@enabled", bool)


class DomainOS(XMLObject):
    TAG = "os"
    firmware = XMLProperty("./@firmware", doc="'efi' or 'bios' (automatic firmware selection)")
    firmware_features = XMLChildList(FirmwareFeature, "./firmware/feature")
    type = XMLProperty("./type")
    arch = XMLProperty("./type/@arch")
    machine = XMLProperty("./type/@machine")
    loader = XMLProperty("./loader")
    loader_readonly = XMLProperty("./loader/@readonly", bool)
    loader_type = XMLProperty("./loader/@type")
    loader_secure = XMLProperty("./loader/@secure", bool)
    nvram = XMLProperty("./nvram")
    kernel = XMLProperty("./kernel")
    initrd = XMLProperty("./initrd")
    cmdline = XMLProperty("./cmdline")
    boot_menu = XMLProperty("./bootmenu/@enable", bool)
    boot = XMLChildList(Boot, "./boot")


class Features(XMLObject):
    TAG = "features"
    acpi = XMLFlag("./acpi")
    apic = XMLFlag("./apic")
    pae = XMLFlag("./pae")
    vmport_state = XMLProperty("./vmport/@state")
    smm_state = XMLProperty("./smm/@state")
    hyperv_mode = XMLProperty("./hyperv/@mode", doc="custom or passthrough")
    hyperv_relaxed = XMLProperty("./hyperv/relaxed/@state", ON_OFF)
    hyperv_vapic = XMLProperty("./hyperv/vapic/@state", ON_OFF)
    hyperv_spinlocks = XMLProperty("./hyperv/spinlocks/@state", ON_OFF)
    hyperv_spinlock_retries = XMLProperty("./hyperv/spinlocks/@retries", int)


class CPU(XMLObject):
    TAG = "cpu"
    mode = XMLProperty("./@mode")
    check = XMLProperty("./@check")
    model = XMLProperty("./model")
    topology_sockets = XMLProperty("./topology/@sockets", int)
    topology_cores = XMLProperty("./topology/@cores", int)
    topology_threads = XMLProperty("./topology/@threads", int)


class Disk(XMLObject):
    TAG = "disk"
    type = XMLProperty("./@type", doc="file, block, volume, network")
    device = XMLProperty("./@device", doc="disk, cdrom, floppy, lun")
    driver_name = XMLProperty("./driver/@name")
    driver_type = XMLProperty("./driver/@type", doc="qcow2, raw")
    driver_cache = XMLProperty("./driver/@cache")
    driver_discard = XMLProperty("./driver/@discard")
    source_file = XMLProperty("./source/@file")
    source_dev = XMLProperty("./source/@dev")
    source_pool = XMLProperty("./source/@pool")
    source_volume = XMLProperty("./source/@volume")
    source_protocol = XMLProperty("./source/@protocol")
    source_name = XMLProperty("./source/@name")
    source_startup_policy = XMLProperty(
        "./source/@startupPolicy", doc="optional: start without the file when it is gone"
    )
    backing_file = XMLProperty("./backingStore/source/@file")
    backing_format = XMLProperty("./backingStore/format/@type")
    target_dev = XMLProperty("./target/@dev")
    target_bus = XMLProperty("./target/@bus")
    readonly = XMLFlag("./readonly")
    shareable = XMLFlag("./shareable")
    boot_order = XMLProperty("./boot/@order", int)
    serial = XMLProperty("./serial")
    alias = XMLProperty("./alias/@name")

    @property
    def source_path(self) -> str | None:
        """The host path behind the disk, whatever the disk type."""
        return self.source_file or self.source_dev


class Interface(XMLObject):
    TAG = "interface"
    type = XMLProperty("./@type", doc="network, bridge, direct, user")
    mac = XMLProperty("./mac/@address")
    source_network = XMLProperty("./source/@network")
    source_bridge = XMLProperty("./source/@bridge")
    source_dev = XMLProperty("./source/@dev")
    source_mode = XMLProperty("./source/@mode")
    model = XMLProperty("./model/@type")
    target_dev = XMLProperty("./target/@dev")
    link_state = XMLProperty("./link/@state")
    boot_order = XMLProperty("./boot/@order", int)
    alias = XMLProperty("./alias/@name")

    @property
    def source(self) -> str | None:
        """The network, bridge or device the NIC is plugged into."""
        return self.source_network or self.source_bridge or self.source_dev


class Graphics(XMLObject):
    TAG = "graphics"
    type = XMLProperty("./@type", doc="vnc, spice")
    port = XMLProperty("./@port", int)
    autoport = XMLProperty("./@autoport", bool)
    listen = XMLProperty("./@listen")
    socket = XMLProperty("./@socket")
    passwd = XMLProperty("./@passwd")
    listen_type = XMLProperty("./listen/@type", doc="address, network, socket, none")
    listen_address = XMLProperty("./listen/@address")
    listen_socket = XMLProperty("./listen/@socket")


class CharDevice(XMLObject):
    """Serial ports, consoles and channels share this shape."""

    TAG = "serial"
    type = XMLProperty("./@type", doc="pty, unix, file, spicevmc")
    source_path = XMLProperty("./source/@path")
    source_mode = XMLProperty("./source/@mode")
    target_type = XMLProperty("./target/@type")
    target_port = XMLProperty("./target/@port", int)
    target_name = XMLProperty("./target/@name")
    target_state = XMLProperty("./target/@state")
    target_model = XMLProperty("./target/model/@name")
    alias = XMLProperty("./alias/@name")


class Serial(CharDevice):
    TAG = "serial"


class Console(CharDevice):
    TAG = "console"


class Channel(CharDevice):
    TAG = "channel"


class Controller(XMLObject):
    TAG = "controller"
    type = XMLProperty("./@type", doc="usb, pci, virtio-serial, scsi, sata, ide")
    index = XMLProperty("./@index", int)
    model = XMLProperty("./@model")


class Video(XMLObject):
    TAG = "video"
    model_type = XMLProperty("./model/@type")
    model_vram = XMLProperty("./model/@vram", int)
    model_heads = XMLProperty("./model/@heads", int)


class Input(XMLObject):
    TAG = "input"
    type = XMLProperty("./@type")
    bus = XMLProperty("./@bus")


class MemBalloon(XMLObject):
    TAG = "memballoon"
    model = XMLProperty("./@model")
    stats_period = XMLProperty("./stats/@period", int)


class RNG(XMLObject):
    TAG = "rng"
    model = XMLProperty("./@model")
    backend_model = XMLProperty("./backend/@model")
    backend = XMLProperty("./backend")


class TPM(XMLObject):
    TAG = "tpm"
    model = XMLProperty("./@model", doc="tpm-crb (TPM 2.0), tpm-tis")
    backend_type = XMLProperty("./backend/@type", doc="emulator (swtpm), passthrough, external")
    backend_version = XMLProperty("./backend/@version", doc="1.2 or 2.0")
    alias = XMLProperty("./alias/@name")


class Devices(XMLObject):
    TAG = "devices"
    emulator = XMLProperty("./emulator")
    disks = XMLChildList(Disk, "./disk")
    interfaces = XMLChildList(Interface, "./interface")
    graphics = XMLChildList(Graphics, "./graphics")
    serials = XMLChildList(Serial, "./serial")
    consoles = XMLChildList(Console, "./console")
    channels = XMLChildList(Channel, "./channel")
    controllers = XMLChildList(Controller, "./controller")
    videos = XMLChildList(Video, "./video")
    inputs = XMLChildList(Input, "./input")
    rngs = XMLChildList(RNG, "./rng")
    tpms = XMLChildList(TPM, "./tpm")
    memballoon = XMLChild(MemBalloon, "./memballoon")


class KvmgrMetadata(XMLObject):
    """What kvmgr records about a VM it made, kept inside libvirt's own definition.

    Stored under ``<metadata>`` in kvmgr's namespace, which libvirt preserves untouched, so the
    record travels with the VM (to another host, into ``virsh dumpxml``) and needs no database.
    """

    TAG = _q("vm")
    os_id = XMLProperty(f"./{_q('os')}", doc="osinfo short id the VM was created for")
    created_by = XMLProperty(f"./{_q('created-by')}")
    template = XMLProperty(f"./{_q('template')}", bool, doc="a template cannot be started")
    linked_base = XMLProperty(f"./{_q('linked-base')}", doc="VM whose disks back this clone")

    @property
    def owned_volumes(self) -> list[str]:
        """Paths of volumes kvmgr created for this VM; only these are deleted with it."""
        parent = self.element.find(_q("volumes"))
        if parent is None:
            return []
        return [node.text for node in parent.findall(_q("volume")) if node.text]

    @owned_volumes.setter
    def owned_volumes(self, paths: list[str]) -> None:
        parent = self.element.find(_q("volumes"))
        if parent is not None:
            self.element.remove(parent)
        if paths:
            parent = etree.SubElement(self.element, _q("volumes"))
            for path in paths:
                etree.SubElement(parent, _q("volume")).text = path


class Domain(XMLObject, _MemoryMixin):
    TAG = "domain"
    type = XMLProperty("./@type", doc="kvm, qemu, test")
    id = XMLProperty("./@id", int)
    name = XMLProperty("./name")
    uuid = XMLProperty("./uuid")
    title = XMLProperty("./title")
    description = XMLProperty("./description")
    vcpus = XMLProperty("./vcpu", int, doc="maximum vCPUs (hotplug ceiling)")
    vcpus_current = XMLProperty("./vcpu/@current", int)
    vcpu_placement = XMLProperty("./vcpu/@placement")
    on_poweroff = XMLProperty("./on_poweroff")
    on_reboot = XMLProperty("./on_reboot")
    on_crash = XMLProperty("./on_crash")
    clock_offset = XMLProperty("./clock/@offset")
    os = XMLChild(DomainOS, "./os")
    features = XMLChild(Features, "./features")
    cpu = XMLChild(CPU, "./cpu")
    devices = XMLChild(Devices, "./devices")

    # ---------------------------------------------------------------- memory, in bytes
    @property
    def memory_bytes(self) -> int | None:
        """Maximum memory (``<memory>``): the balloon's ceiling."""
        return self._get_bytes(self.element, "memory")

    @memory_bytes.setter
    def memory_bytes(self, value: int | None) -> None:
        self._set_bytes(self.element, "memory", value)

    @property
    def current_memory_bytes(self) -> int | None:
        """Memory the guest gets at boot (``<currentMemory>``); defaults to ``<memory>``."""
        return self._get_bytes(self.element, "currentMemory") or self.memory_bytes

    @current_memory_bytes.setter
    def current_memory_bytes(self, value: int | None) -> None:
        self._set_bytes(self.element, "currentMemory", value)

    # ---------------------------------------------------------------- kvmgr metadata
    def kvmgr_metadata(self, *, create: bool = False) -> KvmgrMetadata | None:
        """kvmgr's record inside ``<metadata>``; None for a VM kvmgr did not create."""
        node = self.element.find(f"./metadata/{_q('vm')}")
        if node is None and create:
            metadata = self.element.find("./metadata")
            if metadata is None:
                metadata = etree.Element("metadata")
                name = self.element.find("./name")
                # libvirt accepts any order, but people reading the XML expect it near the top.
                if name is not None:
                    name.addnext(metadata)
                else:
                    self.element.insert(0, metadata)
            node = etree.SubElement(metadata, _q("vm"), nsmap={KVMGR_PREFIX: KVMGR_NS})
        return None if node is None else KvmgrMetadata(node)
