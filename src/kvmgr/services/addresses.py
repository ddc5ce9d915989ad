"""Guests' IP addresses, and which source told each one.

Sources, in the order they are asked (the first that answers wins), and what each needs:

``lease``       libvirt's DHCP leases (networks libvirt runs dnsmasq for); any daemon, remote too.
``agent``       the QEMU guest agent inside the guest; any daemon.
``arp``         the daemon's ARP table through libvirt; any daemon.
``neighbour``   the neighbour table (ARP and IPv6 NDP) of the daemon's network namespace, read
                over netlink inside it; a local daemon and root.  Without root: its IPv4 part,
                ``/proc/PID/net/arp``, reported as ``arp``.
``dhcp-snoop``  the guest's DHCP ACK, heard on its tap device, and ``arp-snoop``: an ARP packet
``arp-snoop``   it sent (:mod:`kvmgr.services.address_learning`); a local daemon and root, and
                someone listening when the guest talks: ``vm create/start --wait ip`` and
                ``vm ip --wait`` listen, and keep what they heard in the running domain's live
                metadata, where later commands find it until the guest stops or its lease ends.

Loopback and IPv6 link-local addresses are left out.
"""

from __future__ import annotations

import ipaddress
import time
from types import TracebackType
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import NotFound, libvirt_errors
from kvmgr.names import validate_existing_name
from kvmgr.services.address_learning import AddressLearner, Learned, remember, remembered
from kvmgr.services.daemon_ns import daemon_proc_net, dump_neighbours, run_in_daemon_netns
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
    # libvirt's own ARP source can fail (libvirt 9.0 answers "wrong nlmsg len" on some hosts)
    # and knows no IPv6: for a local daemon, read the neighbour table of its namespace
    with libvirt_errors(f"reading VM {dom.name()}"):
        domain = Domain.from_xml(dom.XMLDesc(0))
    macs = {iface.mac.lower() for iface in domain.devices.interfaces if iface.mac}
    return _from_daemon_tables(conn, macs) or _facts(remembered(domain), macs)


class AddressWatch:
    """Discovery for a caller that waits: every source above, plus listening to the guest's
    DHCP and ARP traffic meanwhile (when the daemon is local and kvmgr may listen).

    ``why_not`` says why it cannot listen (remote daemon, not root), for the caller's hint."""

    def __init__(self, conn: Connection, domain: libvirt.virDomain | str) -> None:
        self.conn, self.dom = conn, _domain(conn, domain)
        self.learner: AddressLearner | None = None
        self.why_not: str | None = None
        try:
            self.learner = AddressLearner.open(conn, self.dom)
        except (LookupError, OSError, libvirt.libvirtError) as err:
            self.why_not = (
                str(err) if not isinstance(err, libvirt.libvirtError) else (err.get_error_message())
            )

    def addresses(self, wait: float = 0.0) -> list[Address]:
        """What is known now; else what is heard within ``wait`` seconds (kept for later)."""
        found = discover_ips(self.conn, self.dom)
        if found:
            return found
        if self.learner is None:
            time.sleep(wait)
            return []
        learned = self.learner.poll(wait)
        if learned:
            remember(self.dom, learned)
        return _facts(learned, self.learner.macs)

    def close(self) -> None:
        if self.learner is not None:
            self.learner.close()

    def __enter__(self) -> AddressWatch:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()


def wait_for_addresses(
    conn: Connection, domain: libvirt.virDomain | str, timeout: float
) -> tuple[list[Address], str | None]:
    """Addresses of a running VM, waiting (and listening) up to ``timeout`` seconds for one.

    Returns them (empty after the timeout) and why kvmgr could not listen, if it could not."""
    deadline = time.monotonic() + timeout
    with AddressWatch(conn, domain) as watch:
        while True:
            left = deadline - time.monotonic()
            found = watch.addresses(wait=min(0.5, max(left, 0.0)))
            if found or left <= 0:
                return found, watch.why_not


def _from_daemon_tables(conn: Connection, macs: set[str]) -> list[Address]:
    try:
        entries = run_in_daemon_netns(conn, dump_neighbours)
    except LookupError:
        return []  # a remote daemon: its namespace is out of reach
    except OSError:
        return _arp_from_daemon_table(conn, macs)  # not root: the IPv4 part, from /proc
    found = {(mac, ip, "neighbour") for mac, ip, _ifindex in entries if mac in macs and _keep(ip)}
    return _sorted(found)


def _facts(learned: list[Learned], macs: set[str]) -> list[Address]:
    return _sorted({(fact.mac, fact.ip, fact.source) for fact in learned if fact.mac in macs})


def _keep(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return not (address.is_loopback or address.is_link_local or address.is_multicast)


def parse_arp_table(text: str) -> list[tuple[str, str]]:
    """``/proc/net/arp`` -> [(mac, ip)] of complete entries."""
    entries = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 6 or int(fields[2], 16) & _ATF_COMPLETE == 0:
            continue
        entries.append((fields[3].lower(), fields[0]))
    return entries


def _arp_from_daemon_table(conn: Connection, macs: set[str]) -> list[Address]:
    table = daemon_proc_net(conn, "arp")
    if table is None:
        return []
    found = {(mac, ip, "arp") for mac, ip in parse_arp_table(table.read_text()) if mac in macs}
    return _sorted(found)


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
            if _keep(entry["addr"]):
                found.add((mac, str(ipaddress.ip_address(entry["addr"])), source))
    return _sorted(found)


def _sorted(found: set[Address]) -> list[Address]:
    return sorted(found, key=lambda item: (item[0], ipaddress.ip_address(item[1]).version, item[1]))


__all__ = [
    "IP_SOURCES",
    "Address",
    "AddressWatch",
    "discover_ips",
    "parse_arp_table",
    "wait_for_addresses",
]
