"""DHCP reservations follow a migrated VM: what the source's networks reserve for the VM's MACs
is checked against the destination's network of the same name before the move, added there
after it, and removed from the source (kvmgr.control.moves calls :func:`carry`).

A reservation already on the destination for the same MAC and address is kept as it is; one
for the same MAC or address with other values is a preflight problem, never overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import libvirt_errors
from kvmgr.services.networks import normalize_mac
from kvmgr.services.networks_dhcp import reserve, unreserve
from kvmgr.xml.domain import Domain
from kvmgr.xml.network import Network


@dataclass(frozen=True)
class HeldReservation:
    network: str
    mac: str
    ip: str
    hostname: str | None = None


def _network(conn: Connection, name: str) -> Network | None:
    try:
        net = conn.virconn.networkLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return None
        raise
    with libvirt_errors(f"reading network {name}"):
        flags = libvirt.VIR_NETWORK_XML_INACTIVE if net.isPersistent() else 0
        return Network.from_xml(net.XMLDesc(flags))


def _dhcp_hosts(model: Network) -> list[tuple[str, str, str | None]]:
    return [
        (normalize_mac(host.mac), host.ip or "", host.name)
        for ip in model.ips
        for host in ip.dhcp_hosts
        if host.mac
    ]


def reservations_of(conn: Connection, domain: Domain) -> list[HeldReservation]:
    """The reservations ``conn``'s networks hold for the NICs of ``domain``."""
    wanted: dict[str, set[str]] = {}
    for nic in domain.devices.interfaces:
        if nic.type == "network" and nic.source_network and nic.mac:
            wanted.setdefault(nic.source_network, set()).add(normalize_mac(nic.mac))
    held: list[HeldReservation] = []
    for network, macs in sorted(wanted.items()):
        model = _network(conn, network)
        if model is None:
            continue
        held.extend(
            HeldReservation(network, mac, ip, hostname)
            for mac, ip, hostname in _dhcp_hosts(model)
            if mac in macs
        )
    return held


def conflicts(dst: Connection, held: list[HeldReservation]) -> list[str]:
    """Why the destination cannot take these reservations (empty when it can)."""
    problems: list[str] = []
    for reservation in held:
        model = _network(dst, reservation.network)
        if model is None:
            continue  # the missing network is its own preflight problem
        for mac, ip, _hostname in _dhcp_hosts(model):
            same_mac, same_ip = mac == reservation.mac, ip == reservation.ip
            if same_mac != same_ip:
                taken = f"MAC {mac}" if same_ip else f"IP {ip}"
                problems.append(
                    f"the VM's reservation {reservation.ip} ({reservation.mac}) on network "
                    f"{reservation.network!r} clashes with the destination's {taken} there: "
                    f"remove one ('kvmgr net unreserve {reservation.network}')"
                )
    return problems


def carry(src: Connection, dst: Connection, held: list[HeldReservation]) -> list[str]:
    """Add each reservation on the destination (unless it is there), then remove it from the
    source; what was done, one line each."""
    done: list[str] = []
    for reservation in held:
        model = _network(dst, reservation.network)
        if model is None:
            continue
        present = (reservation.mac, reservation.ip) in {
            (mac, ip) for mac, ip, _hostname in _dhcp_hosts(model)
        }
        if not present:
            reserve(dst, reservation.network, reservation.ip, mac=reservation.mac,
                    hostname=reservation.hostname)  # fmt: skip
        unreserve(src, reservation.network, mac=reservation.mac)
        done.append(f"reservation {reservation.ip} ({reservation.mac}) on {reservation.network}")
    return done
