"""libvirt host capabilities and domain capabilities XML as typed objects (read-only use).

https://libvirt.org/formatcaps.html and https://libvirt.org/formatdomaincaps.html.
"""

from __future__ import annotations

from kvmgr.units import KIB, unit_bytes
from kvmgr.xml.base import INT, XMLChild, XMLChildList, XMLObject, XMLProperty


def _to_kib(value: int | None, unit: str | None, what: str) -> int:
    """``value`` in ``unit`` (any unit libvirt accepts; absent is KiB) as whole KiB."""
    return (value or 0) * unit_bytes(unit, what=what, default="KiB") // KIB


class Text(XMLObject):
    """An element whose text is the value (``<value>efi</value>``, ``<machine>pc</machine>``)."""

    TAG = "value"
    text = XMLProperty(".", str)


class HostCPU(XMLObject):
    TAG = "cpu"
    arch = XMLProperty("./arch", str)
    model = XMLProperty("./model", str)
    vendor = XMLProperty("./vendor", str)
    sockets = XMLProperty("./topology/@sockets", INT)
    dies = XMLProperty("./topology/@dies", INT)
    cores = XMLProperty("./topology/@cores", INT)
    threads = XMLProperty("./topology/@threads", INT)


class Pages(XMLObject):
    """A page size, and inside a NUMA cell the number of such pages reserved."""

    TAG = "pages"
    unit = XMLProperty("./@unit", str)
    size = XMLProperty("./@size", INT)
    count = XMLProperty(".", INT)

    @property
    def size_kib(self) -> int:
        return _to_kib(self.size, self.unit, "page size")


class CellCPU(XMLObject):
    TAG = "cpu"
    id = XMLProperty("./@id", INT)


class NUMACell(XMLObject):
    TAG = "cell"
    id = XMLProperty("./@id", INT)
    memory = XMLProperty("./memory", INT)
    memory_unit = XMLProperty("./memory/@unit", str)
    pages = XMLChildList(Pages, "./pages")
    cpus = XMLChildList(CellCPU, "./cpus/cpu")

    @property
    def memory_kib(self) -> int:
        return _to_kib(self.memory, self.memory_unit, "NUMA cell memory")


class Machine(XMLObject):
    TAG = "machine"
    name = XMLProperty(".", str)
    canonical = XMLProperty("./@canonical", str)
    max_cpus = XMLProperty("./@maxCpus", INT)


class GuestDomain(XMLObject):
    TAG = "domain"
    type = XMLProperty("./@type", str)


class Guest(XMLObject):
    TAG = "guest"
    os_type = XMLProperty("./os_type", str)
    arch = XMLProperty("./arch/@name", str)
    wordsize = XMLProperty("./arch/wordsize", INT)
    emulator = XMLProperty("./arch/emulator", str)
    machines = XMLChildList(Machine, "./arch/machine")
    domains = XMLChildList(GuestDomain, "./arch/domain")


class Capabilities(XMLObject):
    """``virConnectGetCapabilities``: the host's CPU, NUMA topology and the guests it can run."""

    TAG = "capabilities"
    uuid = XMLProperty("./host/uuid", str)
    cpu = XMLChild(HostCPU, "./host/cpu")
    page_sizes = XMLChildList(Pages, "./host/cpu/pages")
    cells = XMLChildList(NUMACell, "./host/topology/cells/cell")
    guests = XMLChildList(Guest, "./guest")


class DomainCapabilities(XMLObject):
    """``virConnectGetDomainCapabilities``: what one emulator/machine/domain type supports."""

    TAG = "domainCapabilities"
    path = XMLProperty("./path", str)
    domain = XMLProperty("./domain", str)
    machine = XMLProperty("./machine", str)
    arch = XMLProperty("./arch", str)
    vcpu_max = XMLProperty("./vcpu/@max", INT)
    os_supported = XMLProperty("./os/@supported", bool)
    loaders = XMLChildList(Text, "./os/loader/value")

    def enum(self, parent: str, name: str) -> list[str]:
        """Values of ``<enum name=NAME>`` under ``parent`` (e.g. ``os``, ``firmware``)."""
        node = self.element.find(parent)
        if node is None:
            return []
        for enum in node.findall("enum"):
            if enum.get("name") == name:
                return [value.text or "" for value in enum.findall("value")]
        return []

    @property
    def firmware(self) -> list[str]:
        return self.enum("os", "firmware")

    @property
    def secure_boot(self) -> bool:
        """A Secure Boot build of the firmware is installed (``<loader><enum name='secure'>``)."""
        return "yes" in self.enum("os/loader", "secure")

    def tpm_backend(self, backend: str, version: str) -> bool:
        """TPM devices with ``backend`` (e.g. ``emulator``, which libvirt offers only when it
        finds swtpm) at ``version`` are supported.  An older daemon that lists no versions is
        taken at its backend list."""
        node = self.element.find("devices/tpm")
        if node is None or node.get("supported") != "yes":
            return False
        if backend not in self.enum("devices/tpm", "backendModel"):
            return False
        versions = self.enum("devices/tpm", "backendVersion")
        return not versions or version in versions

    def cpu_mode_supported(self, mode: str) -> bool:
        for node in self.element.findall("cpu/mode"):
            if node.get("name") == mode:
                return node.get("supported") == "yes"
        return False
