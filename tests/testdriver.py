"""libvirt's ``test:///default`` is one driver shared by every connection of a process: this puts
it back as it starts (its VM 'test' running, network 'default', pool 'default-pool', nothing
else), for the fixtures of tests that compare a whole host before and after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import libvirt

from kvmgr.connect import Connection, open_connection


def reset_default_test_driver() -> None:
    conn = libvirt.open("test:///default")
    try:
        for dom in conn.listAllDomains():
            if dom.name() != "test":
                _remove_domain(dom)
        for net in conn.listAllNetworks():
            if net.name() != "default":
                with contextlib.suppress(libvirt.libvirtError):
                    if net.isActive():
                        net.destroy()
                    net.undefine()
        for pool in conn.listAllStoragePools():
            if pool.name() != "default-pool":
                with contextlib.suppress(libvirt.libvirtError):
                    if pool.isActive():
                        pool.destroy()
                    pool.undefine()
        _test_vm_running(conn.lookupByName("test"))
        default = conn.networkLookupByName("default")
        if not default.isActive():
            default.create()
    finally:
        conn.close()


def _remove_domain(dom: libvirt.virDomain) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)


def _test_vm_running(dom: libvirt.virDomain) -> None:
    from kvmgr.xml.domain import KVMGR_NS

    # kvmgr's own record on it (a test made it a template, say) goes too: later tests start it.
    for flags in (libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG):
        with contextlib.suppress(libvirt.libvirtError):
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, KVMGR_NS, flags)
    for snapshot in dom.listAllSnapshots():
        with contextlib.suppress(libvirt.libvirtError):
            snapshot.delete()
    state = dom.state()[0]
    if state == libvirt.VIR_DOMAIN_PAUSED:
        dom.resume()
    elif state != libvirt.VIR_DOMAIN_RUNNING:
        dom.create()


@contextlib.contextmanager
def private_hosts(directory: Path, node_xml: str, count: int = 2) -> Iterator[list[Connection]]:
    """``count`` test:/// hosts, each its own driver file holding ``node_xml`` (a ``<node>``):
    unlike test:///default, each has a state of its own, as separate hosts do."""
    conns = []
    try:
        for index in range(1, count + 1):
            path = directory / f"host{index}.xml"
            path.write_text(node_xml)
            conns.append(open_connection(f"test://{path}"))
        yield conns
    finally:
        for conn in conns:
            conn.close()
