"""What placement needs to know of one host, and the placement group a VM belongs to.

:func:`host_load` answers with a handful of calls whatever the number of VMs: the node's memory
statistics, its CPU count, and one bulk ``getAllDomainStats`` for the vCPUs of the running VMs.
A VM's group (``--group G [--anti-affinity]``) is kept in its own libvirt definition, in kvmgr's
placement namespace under ``<metadata>``, so it moves with the VM; reading the groups of a host
costs one metadata call per VM, made only when a group is asked about.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libvirt
from lxml import etree

from kvmgr.connect import Connection
from kvmgr.errors import libvirt_errors
from kvmgr.host.memory import node_memory
from kvmgr.names import validate_name
from kvmgr.services import vms

GROUP_NS = "https://kvmgr.dev/xmlns/placement/1.0"
_GROUP_PREFIX = "kvmgr-placement"


@dataclass(frozen=True)
class Group:
    name: str
    anti_affinity: bool = False


@dataclass(frozen=True)
class HostLoad:
    cpus: int
    memory_total: int
    memory_available: int  # free + buffers + page cache, bytes
    vcpus_running: int
    vms_running: int
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group -> its VMs here


def host_load(conn: Connection, *, with_groups: bool = False) -> HostLoad:
    with libvirt_errors("reading the host's load"):
        virconn = conn.virconn
        _arch, _node_mib, cpus, *_ = virconn.getInfo()
        memory = node_memory(conn)  # all NUMA nodes; available = free + page cache
        running = virconn.getAllDomainStats(
            libvirt.VIR_DOMAIN_STATS_VCPU | libvirt.VIR_DOMAIN_STATS_BALLOON,
            libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE,
        )
    total, available = memory.total, memory.available
    vcpus = sum(int(values.get("vcpu.current", 0)) for _dom, values in running)
    if not available:  # no node statistics (the test driver): what the running VMs leave
        used = sum(int(values.get("balloon.current", 0)) * 1024 for _dom, values in running)
        available = max(total - used, 0)
    by_group: dict[str, tuple[str, ...]] = {}
    if with_groups:
        for vm, group in sorted(groups(conn).items()):
            by_group[group.name] = (*by_group.get(group.name, ()), vm)
    return HostLoad(int(cpus), total, available, vcpus, len(running), by_group)


def group_of(dom: libvirt.virDomain) -> Group | None:
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, GROUP_NS, 0)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise
    node = etree.fromstring(text.encode())
    name = node.get("name")
    return Group(name, node.get("anti-affinity") == "yes") if name else None


def groups(conn: Connection) -> dict[str, Group]:
    """VM name -> its group, for every VM of the host that has one."""
    found = {}
    with libvirt_errors("reading placement groups"):
        for dom in conn.virconn.listAllDomains(0):
            try:
                group = group_of(dom)
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # removed while we looked
                raise
            if group is not None:
                found[dom.name()] = group
    return found


def set_group(conn: Connection, name: str, group: Group | None) -> None:
    """Put VM ``name`` in ``group`` (None: in none), in its saved definition and, if it runs,
    in the live one too."""
    dom = vms.lookup(conn, name)
    if group is not None:
        validate_name(group.name, what="placement group")
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    with libvirt_errors(f"setting the placement group of VM {name}"):
        if dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        if not dom.isPersistent():
            flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
        if group is None:
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, GROUP_NS, flags)
            return
        element = etree.Element("group", nsmap=None)
        element.set("name", group.name)
        element.set("anti-affinity", "yes" if group.anti_affinity else "no")
        xml = etree.tostring(element, encoding="unicode")
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, _GROUP_PREFIX, GROUP_NS, flags)
