"""Guests' IP addresses, and which source told each one.

Sources, in the order they are asked (the first that answers wins):

``lease``  libvirt's DHCP leases (networks libvirt runs dnsmasq for); any daemon, remote too.
``agent``  the QEMU guest agent inside the guest; any daemon.
``arp``    the daemon's ARP table through libvirt or, when libvirt's ARP source fails, read from
           the local daemon's namespace (``/proc/PID/net/arp``).

Loopback and IPv6 link-local addresses are left out.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import NotFound, libvirt_errors
from kvmgr.names import validate_existing_name
from kvmgr.services.daemon_ns import daemon_proc_net
from kvmgr.xml.domain import Domain

#: (mac, ip, source) of one address of a guest
Address = tuple[str, str, str]

IP_SOURCES = (
    ("lease", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE),
    ("agent", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT),
    ("arp", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP),
)
_ATF_COMPLETE = 0x02  # /proc/net/arp flag of a resolved entry


def discover_ips(
    conn: Connection, domain: libvirt.virDomain | str, *, known_running: bool = False
) -> list[Address]:
    """A running VM's addresses as ``(mac, ip, source)``, from the first source that answers.

    A VM that is not running has no addresses: the answer is an empty list.  ``known_running``
    skips asking for the state when the caller has just read it (a listing read it in bulk: one
    round trip less per running VM).
    """
    dom = _domain(conn, domain)
    if not known_running:
        with libvirt_errors(f"reading the state of VM {dom.name()}"):
            if not dom.isActive():
                return []
    for source_name, source in IP_SOURCES:
        try:
            answer = dom.interfaceAddresses(source, 0)
        except libvirt.libvirtError:
            continue  # no agent, no ARP support...: try the next source
        found = _addresses(answer, source_name)
        if found:
            return found
    # libvirt's own ARP source can fail (libvirt 9.0 answers "wrong nlmsg len" on some hosts):
    # for a local daemon, read the ARP table of its namespace directly
    return _arp_from_daemon_table(conn, dom)


def parse_arp_table(text: str) -> list[tuple[str, str]]:
    """``/proc/net/arp`` -> [(mac, ip)] of complete entries."""
    entries = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 6 or int(fields[2], 16) & _ATF_COMPLETE == 0:
            continue
        entries.append((fields[3].lower(), fields[0]))
    return entries


def _arp_from_daemon_table(conn: Connection, dom: libvirt.virDomain) -> list[Address]:
    table = daemon_proc_net(conn, "arp")
    if table is None:
        return []
    macs = _guest_macs(dom)
    found = {(mac, ip, "arp") for mac, ip in parse_arp_table(table.read_text()) if mac in macs}
    return _sorted(found)


def _guest_macs(dom: libvirt.virDomain) -> set[str]:
    with libvirt_errors(f"reading VM {dom.name()}"):
        domain = Domain.from_xml(dom.XMLDesc(0))
    return {iface.mac.lower() for iface in domain.devices.interfaces if iface.mac}


def _domain(conn: Connection, domain: libvirt.virDomain | str) -> libvirt.virDomain:
    if not isinstance(domain, str):
        return domain
    validate_existing_name(domain, what="VM name")
    try:
        return conn.virconn.lookupByName(domain)
    except libvirt.libvirtError as err:
        raise NotFound(f"VM {domain!r} does not exist", hint="see 'kvmgr vm list'") from err


def _addresses(answer: dict[str, Any] | None, source: str) -> list[Address]:
    found: set[Address] = set()
    for details in (answer or {}).values():
        mac = (details.get("hwaddr") or "").lower()
        for entry in details.get("addrs") or []:
            address = ipaddress.ip_address(entry["addr"])
            if address.is_loopback or address.is_link_local:
                continue
            found.add((mac, str(address), source))
    return _sorted(found)


def _sorted(found: set[Address]) -> list[Address]:
    return sorted(found, key=lambda item: (item[0], ipaddress.ip_address(item[1]).version, item[1]))


__all__ = ["IP_SOURCES", "Address", "discover_ips", "parse_arp_table"]
