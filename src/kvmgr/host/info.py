"""``kvmgr host info``: what the hypervisor host offers, as libvirt reports it.

Everything comes from libvirt (capabilities, domain capabilities, node info, free memory), so the
same call describes a remote host too.
"""

from __future__ import annotations

from typing import Any

import libvirt

from kvmgr.connect.connection import Connection, libvirt_version
from kvmgr.errors import KvmgrError, libvirt_errors
from kvmgr.host.memory import node_memory
from kvmgr.units import KIB, format_size
from kvmgr.xml.capabilities import Capabilities, DomainCapabilities, Guest


def host_info(conn: Connection) -> dict[str, Any]:
    """Host CPU, topology, NUMA cells, memory, hugepages and what guests can be given."""
    with libvirt_errors("reading the host's capabilities"):
        caps = Capabilities.from_xml(conn.virconn.getCapabilities())
        arch, _node_mib, cpus, mhz, *_ = conn.virconn.getInfo()
        hostname = conn.virconn.getHostname()
    choice = conn.domain_type()
    info: dict[str, Any] = {
        "hostname": hostname,
        "uri": conn.uri,
        "libvirt": libvirt_version(conn),
        "domain_type": choice.domain_type,
        "domain_type_reason": choice.reason,
        "arch": arch,
        "cpu_model": caps.cpu.model,
        "cpu_vendor": caps.cpu.vendor,
        "cpus": cpus,
        "mhz": mhz,
        "sockets": caps.cpu.sockets,
        "cores_per_socket": caps.cpu.cores,
        "threads_per_core": caps.cpu.threads,
        # all NUMA nodes' memory, not getInfo's (one node on some hosts): kvmgr.host.memory
        **{key: format_size(value) for key, value in node_memory(conn).as_dict().items()},
        "numa_cells": _cells(conn, caps),
        "hugepages": _hugepages(caps),
    }
    info.update(_guest_support(conn, caps, arch, choice.domain_type))
    return info


def _cells(conn: Connection, caps: Capabilities) -> list[dict[str, Any]]:
    cells = list(caps.cells)
    try:
        free = conn.virconn.getCellsFreeMemory(0, len(cells)) if cells else []
    except libvirt.libvirtError:
        free = []  # drivers without per-cell accounting: show totals only
    rows = []
    for index, cell in enumerate(cells):
        row: dict[str, Any] = {
            "id": cell.id,
            "cpus": len(cell.cpus),
            "memory": format_size(cell.memory_kib * KIB),
        }
        if index < len(free):
            row["free"] = format_size(free[index])
        rows.append(row)
    return rows


def _hugepages(caps: Capabilities) -> list[dict[str, Any]]:
    """Page sizes above the base page, with how many are reserved across all cells."""
    sizes = sorted({p.size_kib for p in caps.page_sizes})
    base = sizes[0] if sizes else 4
    rows = []
    for size in sizes:
        if size == base:
            continue
        reserved = sum(p.count or 0 for c in caps.cells for p in c.pages if p.size_kib == size)
        rows.append(
            {
                "size": format_size(size * KIB),
                "reserved": reserved,
                "total": format_size(reserved * size * KIB),
            }
        )
    return rows


def _guest_for(caps: Capabilities, arch: str) -> Guest | None:
    return next((g for g in caps.guests if g.arch == arch and g.os_type == "hvm"), None)


def _guest_support(
    conn: Connection, caps: Capabilities, arch: str, domain_type: str
) -> dict[str, Any]:
    guest = _guest_for(caps, arch)
    if guest is None:
        return {"machine_types": [], "note": f"libvirt offers no {arch} hvm guests on this host"}
    aliases = sorted(f"{m.name}={m.canonical}" for m in guest.machines if m.canonical)
    support: dict[str, Any] = {
        "emulator": guest.emulator,
        "guest_domain_types": [d.type for d in guest.domains],
        "machine_types": aliases,
        "machine_type_count": len({m.canonical or m.name for m in guest.machines}),
    }
    machines = ["pc", "q35"] if any(m.name == "q35" for m in guest.machines) else [None]
    max_vcpus: dict[str, int | None] = {}
    for machine in machines:
        domcaps = _domain_capabilities(conn, arch, machine, domain_type)
        if domcaps is None:
            continue
        max_vcpus[domcaps.machine or machine or "default"] = domcaps.vcpu_max
        if "firmware" not in support:
            support["default_machine"] = domcaps.machine
            support["firmware"] = ["bios", *domcaps.firmware]
            support["uefi_loaders"] = [loader.text for loader in domcaps.loaders]
            support["secure_boot"] = "yes" in domcaps.enum("os/loader", "secure")
            support["host_passthrough_cpu"] = domcaps.cpu_mode_supported("host-passthrough")
    if max_vcpus:
        support["max_vcpus"] = max_vcpus
    return support


def _domain_capabilities(
    conn: Connection, arch: str, machine: str | None, domain_type: str
) -> DomainCapabilities | None:
    """Domain capabilities, or None where the driver has none (libvirt's test driver)."""
    try:
        with libvirt_errors(f"reading domain capabilities of {machine or 'the default machine'}"):
            text = conn.virconn.getDomainCapabilities(None, arch, machine, domain_type, 0)
    except KvmgrError:
        return None
    return DomainCapabilities.from_xml(text)
