"""DHCP reservations and leases of the networks libvirt runs dnsmasq for.

Split from :mod:`kvmgr.services.networks` (which re-exports ``reserve``, ``unreserve`` and
``leases``); every change goes through ``virNetwork.update``, live and saved at once.
"""

from __future__ import annotations

import ipaddress

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import (
    AlreadyExists,
    InvalidInput,
    InvalidState,
    NotFound,
    Unsupported,
    libvirt_errors,
)
from kvmgr.names import validate_existing_name
from kvmgr.services.network_subnets import _address, _ipv4, _subnet_of
from kvmgr.services.networks import (
    _HOSTNAME_RE,
    Lease,
    Reservation,
    _lookup,
    _parse,
    normalize_mac,
)
from kvmgr.xml.base import XMLObject
from kvmgr.xml.domain import Domain
from kvmgr.xml.network import DHCPHost, Network, NetworkIP


def _vm_mac(conn: Connection, vm: str, network: str) -> str:
    validate_existing_name(vm, what="VM name")
    try:
        dom = conn.virconn.lookupByName(vm)
    except libvirt.libvirtError as err:
        raise NotFound(f"VM {vm!r} does not exist", hint="see 'kvmgr vm list'") from err
    with libvirt_errors(f"reading VM {vm}"):
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if dom.isPersistent() else 0
        domain = Domain.from_xml(dom.XMLDesc(flags))
    macs = [
        iface.mac
        for iface in domain.devices.interfaces
        if iface.source_network == network and iface.mac
    ]
    if not macs:
        raise InvalidInput(
            f"VM {vm!r} has no interface on network {network!r}",
            hint="attach it first, or give --mac",
        )
    if len(macs) > 1:
        raise InvalidInput(
            f"VM {vm!r} has {len(macs)} interfaces on network {network!r}: {', '.join(macs)}",
            hint="choose one with --mac",
        )
    return normalize_mac(macs[0])


def _dhcp_ip(model: Network, name: str) -> NetworkIP:
    ip = _ipv4(model)
    if ip is None or not list(ip.dhcp_ranges):
        raise Unsupported(
            f"network {name!r} ({model.mode}) has no DHCP server run by libvirt",
            hint="reservations apply to nat, isolated and routed networks",
        )
    return ip


def _check_reservation(
    ip_def: NetworkIP, name: str, mac: str, address: ipaddress.IPv4Address, hostname: str | None
) -> None:
    subnet = _subnet_of(ip_def)
    gateway = ipaddress.IPv4Address(ip_def.address or "0.0.0.0")  # noqa: S104 - never matches a host
    if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
        raise InvalidInput(f"IP {address} is not a host address of network {name!r} ({subnet})")
    if address == gateway:
        raise InvalidInput(
            f"IP {address} is the gateway of network {name!r}", hint="choose another IP"
        )
    for host in ip_def.dhcp_hosts:
        if host.mac and host.mac.lower() == mac:
            raise AlreadyExists(
                f"MAC {mac} already has a reservation on {name!r} ({host.ip})",
                hint=f"remove it first with 'kvmgr net unreserve {name} --mac {mac}'",
            )
        if host.ip == str(address):
            raise AlreadyExists(
                f"IP {address} is already reserved on {name!r} for {host.mac or host.name}",
                hint="choose another IP",
            )
        if hostname and host.name == hostname:
            raise AlreadyExists(f"host name {hostname!r} is already reserved on {name!r}")


def _update_flags(net: libvirt.virNetwork) -> int:
    """Change the running network and its saved definition, whichever exist."""
    flags = 0
    if net.isActive():
        flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
    if net.isPersistent():
        flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
    return flags


def reserve(
    conn: Connection,
    name: str,
    ip: str,
    *,
    mac: str | None = None,
    vm: str | None = None,
    hostname: str | None = None,
) -> Reservation:
    """Give ``mac`` (or ``vm``'s NIC on this network) the fixed address ``ip``, live and saved."""
    if (mac is None) == (vm is None):
        raise InvalidInput("give exactly one of --mac or --vm")
    net = _lookup(conn, name)
    model = _parse(net, inactive=bool(net.isPersistent()))
    ip_def = _dhcp_ip(model, name)
    mac = normalize_mac(mac) if mac else _vm_mac(conn, vm or "", name)
    address = _address(ip, "IP")
    if hostname and not _HOSTNAME_RE.match(hostname):
        raise InvalidInput(
            f"host name {hostname!r} is not a DNS label", hint="letters, digits and '-'"
        )
    _check_reservation(ip_def, name, mac, address, hostname)
    host = DHCPHost()
    host.mac, host.ip, host.name = mac, str(address), hostname
    _update_dhcp_host(
        net,
        libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
        host,
        f"reserving {address} on network {name}",
    )
    return Reservation(mac, str(address), hostname)


def _update_dhcp_host(net: libvirt.virNetwork, command: int, host: XMLObject, doing: str) -> None:
    with libvirt_errors(doing):
        net.update(
            command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, host.to_xml(), _update_flags(net)
        )


def unreserve(
    conn: Connection,
    name: str,
    *,
    mac: str | None = None,
    ip: str | None = None,
    vm: str | None = None,
) -> Reservation:
    """Remove the reservation matching ``mac``, ``ip`` or ``vm``'s NIC, live and saved."""
    if sum(value is not None for value in (mac, ip, vm)) != 1:
        raise InvalidInput("give exactly one of --mac, --ip or --vm")
    net = _lookup(conn, name)
    model = _parse(net, inactive=bool(net.isPersistent()))
    ip_def = _dhcp_ip(model, name)
    wanted_mac = normalize_mac(mac) if mac else (_vm_mac(conn, vm, name) if vm else None)
    wanted_ip = str(_address(ip, "IP")) if ip else None
    for host in ip_def.dhcp_hosts:
        if (wanted_mac and (host.mac or "").lower() == wanted_mac) or (
            wanted_ip and host.ip == wanted_ip
        ):
            found = Reservation(host.mac, host.ip, host.name)
            _update_dhcp_host(
                net,
                libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
                host,
                f"removing reservation {host.ip} on network {name}",
            )
            return found
    raise NotFound(
        f"network {name!r} has no reservation for {wanted_mac or wanted_ip}",
        hint=f"see 'kvmgr net info {name}'",
    )


def leases(conn: Connection, name: str) -> list[Lease]:
    """Current DHCP leases handed out by libvirt's dnsmasq on network ``name``."""
    net = _lookup(conn, name)
    if not net.isActive():
        raise InvalidState(
            f"network {name!r} is not running", hint=f"start it with 'kvmgr net start {name}'"
        )
    with libvirt_errors(f"reading DHCP leases of network {name}"):
        raw = net.DHCPLeases()
    return sorted(
        (
            Lease(
                mac=entry.get("mac") or "",
                ip=entry.get("ipaddr") or "",
                prefix=int(entry.get("prefix") or 0),
                hostname=entry.get("hostname") or None,
                expires=int(entry.get("expirytime") or 0),
                interface=entry.get("iface") or "",
            )
            for entry in raw
        ),
        key=lambda lease: ipaddress.ip_address(lease.ip) if lease.ip else ipaddress.IPv4Address(0),
    )


__all__ = ["leases", "reserve", "unreserve"]
