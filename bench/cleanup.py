"""Removing what a benchmark made on the real daemon: only names with the bench prefix.

A domain is powered off and undefined; the disks its definition names are deleted only when they
live in the directory the benchmark created them in (never an ISO, never another's disk).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

import libvirt
from lxml import etree

from bench.driverfile import NAME_PREFIX


def disk_paths(dom: libvirt.virDomain) -> list[str]:
    tree = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    return [str(path) for path in tree.xpath("./devices/disk[@device='disk']/source/@file")]


def remove_file_or_volume(conn: libvirt.virConnect, path: str) -> None:
    try:
        conn.storageVolLookupByPath(path).delete(0)
    except libvirt.libvirtError:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def remove_domain(
    conn: libvirt.virConnect, name: str, *, disks_under: Iterable[str] = ()
) -> list[str]:
    """Undefine ``name`` (a bench name only) and delete its disks under ``disks_under``."""
    if not name.startswith(NAME_PREFIX):
        raise ValueError(f"refusing to remove {name!r}: not a benchmark domain")
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return []
    paths = disk_paths(dom)
    if dom.isActive():
        dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        for snapshot in dom.listAllSnapshots(0):
            snapshot.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    dom.undefineFlags(
        libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA  # backup benchmarks leave some
    )
    roots = tuple(os.path.join(root, "") for root in disks_under)
    removed = []
    for path in paths:
        if roots and path.startswith(roots) and os.path.basename(path).startswith(NAME_PREFIX):
            remove_file_or_volume(conn, path)
            removed.append(path)
    return removed


def sweep(conn: libvirt.virConnect, prefix: str, *, disks_under: Iterable[str] = ()) -> None:
    """Remove every domain whose name starts with ``prefix`` (a leftover of an earlier run)."""
    if not prefix.startswith(NAME_PREFIX):
        raise ValueError(f"refusing to sweep {prefix!r}: not a benchmark prefix")
    roots = list(disks_under)
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(prefix):
            remove_domain(conn, dom.name(), disks_under=roots)


def sweep_files(conn: libvirt.virConnect, directory: str, prefix: str) -> None:
    """Delete files named ``prefix*`` in ``directory`` that no domain kept (a failed define)."""
    if not prefix.startswith(NAME_PREFIX):
        raise ValueError(f"refusing to sweep {prefix!r}: not a benchmark prefix")
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.name.startswith(prefix) and entry.is_file():
                remove_file_or_volume(conn, entry.path)
