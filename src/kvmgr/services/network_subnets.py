"""IPv4 subnets for virtual networks: which subnet a new network gets and its DHCP range.

What lives here: parsing and checking a subnet (:func:`parse_subnet`), what is in use on the
daemon's host (:func:`used_subnets`: every libvirt network, the addresses of the host interfaces
libvirt reports and, for a local daemon, its routing table read through the daemon's own
``/proc/PID/net/route``, because the daemon may run in another network namespace), picking a free
/24 (:func:`pick_free_subnet`), and the DHCP range (default and parsed).  A remote daemon's routes
cannot be read; libvirt's own route check on start covers that case.  Networks themselves live in
:mod:`kvmgr.services.networks`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import AlreadyExists, InvalidInput, Unsupported, libvirt_errors
from kvmgr.services.daemon_ns import daemon_proc_net
from kvmgr.xml.interface import HostInterface
from kvmgr.xml.network import Network, NetworkIP

#: Where a free /24 is looked for when no subnet is given (libvirt's own default is 192.168.122).
DEFAULT_SUBNET_SEARCH = "192.168.100.0/22,192.168.104.0/21,192.168.112.0/20,192.168.128.0/17"

Subnet = ipaddress.IPv4Network


def _ipv4(model: Network) -> NetworkIP | None:
    """The network's IPv4 definition (kvmgr manages one per network)."""
    for ip in model.ips:
        if (ip.family or "ipv4") == "ipv4" and ip.address:
            return ip
    return None


def _subnet_of(ip: NetworkIP) -> Subnet:
    address = ip.address or ""
    mask = str(ip.prefix) if ip.prefix is not None else (ip.netmask or "24")
    return ipaddress.IPv4Network(f"{address}/{mask}", strict=False)


def parse_subnet(text: str) -> Subnet:
    """``10.20.0.0/24`` -> network; clear errors for host bits, IPv6 and tiny subnets."""
    try:
        subnet = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as err:
        loose = _loose_network(text)
        hint = f"did you mean {loose}?" if loose else "use CIDR form, e.g. 10.20.0.0/24"
        raise InvalidInput(f"subnet {text!r} is not a network address", hint=hint) from err
    if not isinstance(subnet, ipaddress.IPv4Network):
        raise Unsupported(f"subnet {text!r} is IPv6", hint="kvmgr networks take an IPv4 subnet")
    if subnet.prefixlen > 29:
        raise InvalidInput(
            f"subnet {text!r} is too small for a gateway and DHCP", hint="use /29 or larger"
        )
    return subnet


def _loose_network(text: str) -> str | None:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        return None


def parse_route_table(text: str) -> list[tuple[Subnet, str]]:
    """``/proc/net/route`` -> [(destination subnet, interface)], skipping default routes.

    Addresses in that file are little-endian hex, e.g. ``007AA8C0`` is 192.168.122.0.
    """
    routes: list[tuple[Subnet, str]] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, dest_hex, mask_hex = fields[0], fields[1], fields[7]
        dest = ipaddress.IPv4Address(bytes(reversed(bytes.fromhex(dest_hex))))
        mask = ipaddress.IPv4Address(bytes(reversed(bytes.fromhex(mask_hex))))
        if int(mask) == 0:
            continue  # a default route overlaps everything and says nothing about local use
        routes.append((ipaddress.IPv4Network(f"{dest}/{mask}", strict=False), iface))
    return routes


def _host_interface_subnets(conn: Connection) -> Iterator[tuple[Subnet, str]]:
    try:
        ifaces = conn.virconn.listAllInterfaces(0)
    except libvirt.libvirtError:
        return  # no interface backend on that daemon: routes and networks still cover most
    for iface in ifaces:
        try:
            model = HostInterface.from_xml(iface.XMLDesc(0))
        except libvirt.libvirtError:
            continue  # the interface went away while we listed
        for proto in model.protocols:
            for ip in proto.ips:
                if (proto.family or "ipv4") == "ipv4" and ip.address and ip.prefix is not None:
                    subnet = ipaddress.IPv4Network(f"{ip.address}/{ip.prefix}", strict=False)
                    yield subnet, f"address {ip.address} on host interface {model.name}"


def used_subnets(conn: Connection, *, ignore: str | None = None) -> list[tuple[Subnet, str]]:
    """Every IPv4 subnet in use on the daemon's host, with what uses it (for error messages)."""
    # Reading a network's XML is the networks module's, which builds on this one.
    from kvmgr.services.networks import _parse

    used: list[tuple[Subnet, str]] = []
    with libvirt_errors("listing networks"):
        nets = conn.virconn.listAllNetworks(0)
    for net in nets:
        if net.name() == ignore:
            continue
        ip = _ipv4(_parse(net, inactive=True))
        if ip is not None:
            used.append((_subnet_of(ip), f"libvirt network {net.name()!r}"))
    used.extend(_host_interface_subnets(conn))
    route_file = daemon_proc_net(conn, "route")
    if route_file is not None:
        for subnet, iface in parse_route_table(route_file.read_text()):
            used.append((subnet, f"a host route via {iface}"))
    return used


def check_subnet_free(conn: Connection, subnet: Subnet, *, ignore: str | None = None) -> None:
    """Raise :class:`AlreadyExists` naming the user when ``subnet`` overlaps anything in use."""
    for other, user in used_subnets(conn, ignore=ignore):
        if subnet.overlaps(other):
            raise AlreadyExists(
                f"subnet {subnet} overlaps {other}, used by {user}",
                hint="choose another --subnet, or leave it out to get a free one",
            )


def pick_free_subnet(conn: Connection, search: str = DEFAULT_SUBNET_SEARCH) -> Subnet:
    """The first /24 inside ``search`` (comma-separated CIDRs) that overlaps nothing in use."""
    used = [subnet for subnet, _user in used_subnets(conn)]
    for block_text in search.split(","):
        block = parse_subnet(block_text)
        for candidate in _candidates(block):
            if not any(candidate.overlaps(other) for other in used):
                return candidate
    raise AlreadyExists(f"no free /24 left in {search}", hint="give one explicitly with --subnet")


def _candidates(block: Subnet) -> Iterable[Subnet]:
    if block.prefixlen >= 24:
        return [block]
    return block.subnets(new_prefix=24)


def default_dhcp_range(subnet: Subnet) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """.100-.254 of a /24 (and the same shape for larger subnets), leaving .2-.99 for fixed IPs.

    Small subnets have no room for that split, so they hand out everything after the gateway.
    """
    first, last = subnet.network_address + 2, subnet.broadcast_address - 1
    if subnet.num_addresses >= 256:
        first = subnet.network_address + 100
    return first, last


def parse_dhcp_range(
    text: str, subnet: Subnet
) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    start_text, sep, end_text = text.partition("-")
    if not sep:
        raise InvalidInput(
            f"DHCP range {text!r} is not START-END", hint="e.g. 10.20.0.100-10.20.0.200"
        )
    start, end = _address(start_text, "DHCP range start"), _address(end_text, "DHCP range end")
    gateway = subnet.network_address + 1
    for address in (start, end):
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
            raise InvalidInput(f"DHCP range address {address} is not a host address of {subnet}")
        if address == gateway:
            raise InvalidInput(f"DHCP range must not include the gateway {gateway}")
    if start > end or start <= gateway <= end:
        raise InvalidInput(
            f"DHCP range {text!r} is not an increasing range above the gateway {gateway}"
        )
    return start, end


def _address(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text.strip())
    except ValueError as err:
        raise InvalidInput(f"{what} {text.strip()!r} is not an IPv4 address") from err
