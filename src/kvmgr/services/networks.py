"""Virtual networks: NAT, isolated, routed and host-bridged; DHCP reservations, leases, guest IPs.

Everything goes through libvirt's network API, so it works the same against a remote daemon.
Policy lives here: which subnet a new network gets, its DHCP range, what counts as "in use".

Subnets are checked against what the *daemon* sees: every libvirt network, the addresses of the
host interfaces libvirt reports and, for a local daemon, its routing table (read through the
daemon's own ``/proc/PID/net/route``, because the daemon may run in another network namespace).
A remote daemon's routes cannot be read; libvirt's own route check on start covers that case and
the network is then undefined again.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.connect.uri import is_local
from kvmgr.errors import (
    AlreadyExists,
    InvalidInput,
    InvalidState,
    KvmgrError,
    NotFound,
    Unsupported,
    libvirt_errors,
    translate,
)
from kvmgr.names import validate_existing_name, validate_name
from kvmgr.xml.base import XMLObject
from kvmgr.xml.domain import Domain
from kvmgr.xml.interface import HostInterface
from kvmgr.xml.network import DHCPHost, DHCPRange, Network, NetworkIP

MODES = ("nat", "isolated", "routed", "bridge")
_FORWARD_MODES = {"nat": "nat", "routed": "route", "bridge": "bridge"}
#: Where a free /24 is looked for when no subnet is given (libvirt's own default is 192.168.122).
DEFAULT_SUBNET_SEARCH = "192.168.100.0/22,192.168.104.0/21,192.168.112.0/20,192.168.128.0/17"
MAX_BRIDGE_NAME = 15  # IFNAMSIZ - 1
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_DNS_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_HOSTNAME_RE = re.compile(rf"^{_DNS_LABEL}$")
_DAEMON_PID_FILES = ("/run/libvirtd.pid", "/run/libvirt/virtnetworkd.pid", "/run/virtnetworkd.pid")

_ATF_COMPLETE = 0x02  # /proc/net/arp flag of a resolved entry
Subnet = ipaddress.IPv4Network


# ----------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class NetworkSpec:
    """What ``kvmgr net create`` asks for; ``None`` fields get kvmgr's defaults."""

    name: str
    mode: str = "nat"
    subnet: str | None = None
    dhcp_range: str | None = None
    bridge: str | None = None
    domain: str | None = None
    autostart: bool = True
    #: comma-separated CIDRs searched for a free /24 when ``subnet`` is None
    subnet_search: str = DEFAULT_SUBNET_SEARCH


@dataclass(frozen=True)
class Reservation:
    mac: str | None
    ip: str | None
    hostname: str | None


@dataclass(frozen=True)
class Lease:
    mac: str
    ip: str
    prefix: int
    hostname: str | None
    expires: int
    interface: str


@dataclass
class NetworkInfo:
    name: str
    uuid: str | None
    mode: str
    subnet: str | None
    gateway: str | None
    dhcp_start: str | None
    dhcp_end: str | None
    bridge: str | None
    domain: str | None
    active: bool
    autostart: bool
    persistent: bool
    vms: list[str] = field(default_factory=list)
    reservations: list[Reservation] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------- lookups
def _lookup(conn: Connection, name: str) -> libvirt.virNetwork:
    validate_existing_name(name, what="network name")
    try:
        return conn.virconn.networkLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            raise NotFound(f"network {name!r} does not exist", hint="see 'kvmgr net list'") from err
        raise translate(err, f"looking up network {name}") from err


def _exists(conn: Connection, name: str) -> bool:
    try:
        _lookup(conn, name)
    except NotFound:
        return False
    return True


def _parse(net: libvirt.virNetwork, *, inactive: bool = False) -> Network:
    """The network's live XML, or its saved definition with ``inactive``."""
    with libvirt_errors(f"reading network {net.name()}"):
        if inactive:
            try:
                return Network.from_xml(net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE))
            except libvirt.libvirtError as err:
                # drivers without that flag (libvirt's test driver) have one definition only
                if err.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                    raise
        return Network.from_xml(net.XMLDesc(0))


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


# ----------------------------------------------------------------------------------- VM usage
def _uses_network(domain: Domain, name: str, bridge: str | None) -> bool:
    for iface in domain.devices.interfaces:
        # a running VM's live XML turns type 'network' into the type it resolved to, but keeps
        # the source network's name
        if iface.source_network == name:
            return True
        if bridge and iface.type == "bridge" and iface.source_bridge == bridge:
            return True
    return False


def _vms_by_network(conn: Connection, models: dict[str, Network]) -> dict[str, list[str]]:
    """Network name -> sorted names of the VMs attached to it, from one pass over the VMs."""
    users: dict[str, set[str]] = {name: set() for name in models}
    from kvmgr.services.vms import all_definitions

    for dom, domain in all_definitions(conn):
        vm = dom.name()
        for name, model in models.items():
            # a host bridge in bridge mode is shared with non-libvirt users: match by network only
            bridge = None if model.mode == "bridge" else model.bridge_name
            if _uses_network(domain, name, bridge):
                users[name].add(vm)
    return {name: sorted(vms) for name, vms in users.items()}


def vms_using(conn: Connection, name: str) -> list[str]:
    """Names of the VMs (running or not) with an interface on network ``name``."""
    model = _parse(_lookup(conn, name))
    return _vms_by_network(conn, {name: model})[name]


# ----------------------------------------------------------------------------------- info
def _info(net: libvirt.virNetwork, model: Network, vms: list[str]) -> NetworkInfo:
    ip = _ipv4(model)
    subnet = _subnet_of(ip) if ip else None
    ranges = list(ip.dhcp_ranges) if ip else []
    with libvirt_errors(f"reading network {model.name}"):
        active, autostart, persistent = (
            bool(net.isActive()),
            bool(net.autostart()),
            bool(net.isPersistent()),
        )
    return NetworkInfo(
        name=model.name or net.name(),
        uuid=model.uuid,
        mode=model.mode,
        subnet=str(subnet) if subnet else None,
        gateway=ip.address if ip else None,
        dhcp_start=ranges[0].start if ranges else None,
        dhcp_end=ranges[0].end if ranges else None,
        bridge=model.bridge_name,
        domain=model.domain_name,
        active=active,
        autostart=autostart,
        persistent=persistent,
        vms=vms,
        reservations=[Reservation(h.mac, h.ip, h.name) for h in ip.dhcp_hosts] if ip else [],
    )


def list_networks(conn: Connection) -> list[NetworkInfo]:
    """Every libvirt network with its mode, subnet, state and the VMs attached."""
    with libvirt_errors("listing networks"):
        nets = conn.virconn.listAllNetworks(0)
    models = {net.name(): _parse(net) for net in nets}
    users = _vms_by_network(conn, models)
    infos = [_info(net, models[net.name()], users[net.name()]) for net in nets]
    return sorted(infos, key=lambda info: info.name)


def network_info(conn: Connection, name: str) -> NetworkInfo:
    net = _lookup(conn, name)
    model = _parse(net)
    return _info(net, model, _vms_by_network(conn, {name: model})[name])


# ----------------------------------------------------------------------------------- subnets
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


def _daemon_proc_net(conn: Connection, table: str) -> Path | None:
    """A /proc/net table (``route``, ``arp``) as the *daemon* sees it: ``/proc/PID/net/TABLE``
    shows the daemon's network namespace.  None for a remote daemon (or the test driver)."""
    if not is_local(conn.uri) or conn.is_test_driver:
        return None
    for pid_file in _DAEMON_PID_FILES:
        try:
            pid = int(Path(pid_file).read_text().strip())
        except (OSError, ValueError):
            continue
        path = Path(f"/proc/{pid}/net/{table}")
        if path.exists():
            return path
    path = Path(f"/proc/net/{table}")
    return path if path.exists() else None


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
    route_file = _daemon_proc_net(conn, "route")
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


# ----------------------------------------------------------------------------------- create
def _validate_bridge_name(name: str) -> str:
    if len(name) > MAX_BRIDGE_NAME or not _BRIDGE_RE.match(name):
        raise InvalidInput(
            f"bridge name {name!r} is not a valid interface name",
            hint=f"use at most {MAX_BRIDGE_NAME} letters, digits, '-', '_' or '.'",
        )
    return name


def host_bridges(conn: Connection) -> list[str]:
    """Bridges the *daemon* sees (its host or network namespace), via libvirt's interface API."""
    with libvirt_errors("listing host interfaces"):
        ifaces = conn.virconn.listAllInterfaces(0)
        models = [HostInterface.from_xml(iface.XMLDesc(0)) for iface in ifaces]
    return sorted(model.name for model in models if model.type == "bridge" and model.name)


def _check_host_bridge(conn: Connection, bridge: str) -> None:
    try:
        bridges = host_bridges(conn)
    except Unsupported:
        return  # no interface backend on that daemon: libvirt itself checks when VMs attach
    if bridge not in bridges:
        raise NotFound(
            f"host bridge {bridge!r} does not exist on the libvirt host",
            hint=f"create it with 'kvmgr host bridge create {bridge}'"
            + (f" (bridges there: {', '.join(bridges)})" if bridges else ""),
        )


def build_network_xml(spec: NetworkSpec, subnet: Subnet | None) -> Network:
    """The libvirt definition for ``spec`` (``subnet`` already chosen and checked)."""
    model = Network()
    model.name = spec.name
    if spec.mode != "isolated":
        model.forward_mode = _FORWARD_MODES[spec.mode]
    if spec.bridge:
        model.bridge_name = spec.bridge
    if spec.mode == "bridge":
        return model  # DHCP and addressing come from the LAN behind the host bridge
    if spec.domain:
        model.domain_name = spec.domain
        model.domain_local_only = True
    assert subnet is not None
    ip = NetworkIP()
    ip.address = str(subnet.network_address + 1)
    ip.prefix = subnet.prefixlen
    start, end = (
        parse_dhcp_range(spec.dhcp_range, subnet) if spec.dhcp_range else default_dhcp_range(subnet)
    )
    dhcp_range = DHCPRange()
    dhcp_range.start, dhcp_range.end = str(start), str(end)
    ip.dhcp_ranges.append(dhcp_range)
    model.ips.append(ip)
    return model


def _validate_spec(conn: Connection, spec: NetworkSpec) -> Subnet | None:
    """Check everything before anything is made; return the subnet the network will use."""
    validate_name(spec.name, what="network name")
    if spec.mode not in MODES:
        raise InvalidInput(
            f"network mode {spec.mode!r} is unknown", hint=f"use one of {', '.join(MODES)}"
        )
    if spec.bridge:
        _validate_bridge_name(spec.bridge)
    if spec.domain and not _DOMAIN_RE.match(spec.domain):
        raise InvalidInput(
            f"DNS domain {spec.domain!r} is not a domain name", hint="e.g. example.lan"
        )
    with libvirt_errors(f"looking up network {spec.name}"):
        if _exists(conn, spec.name):
            raise AlreadyExists(f"network {spec.name!r} already exists", hint="choose another name")
    if spec.mode == "bridge":
        _validate_bridge_mode(conn, spec)
        return None
    if spec.subnet:
        subnet = parse_subnet(spec.subnet)
        check_subnet_free(conn, subnet)
    else:
        subnet = pick_free_subnet(conn, spec.subnet_search)
    if spec.dhcp_range:
        parse_dhcp_range(spec.dhcp_range, subnet)
    return subnet


def _validate_bridge_mode(conn: Connection, spec: NetworkSpec) -> None:
    if not spec.bridge:
        raise InvalidInput(
            "mode bridge needs the host bridge to attach to", hint="add --bridge br0"
        )
    for option, value in (
        ("--subnet", spec.subnet),
        ("--dhcp-range", spec.dhcp_range),
        ("--domain", spec.domain),
    ):
        if value:
            raise InvalidInput(
                f"{option} does not apply to mode bridge",
                hint="addresses of a bridged network come from the LAN behind the bridge",
            )
    _check_host_bridge(conn, spec.bridge)


def create_network(conn: Connection, spec: NetworkSpec) -> NetworkInfo:
    """Define, start and (by default) autostart a network; undo the definition if a step fails."""
    subnet = _validate_spec(conn, spec)
    model = build_network_xml(spec, subnet)
    with libvirt_errors(f"defining network {spec.name}"):
        net = conn.virconn.networkDefineXML(model.to_xml())
    try:
        with libvirt_errors(f"starting network {spec.name}"):
            net.create()
            net.setAutostart(1 if spec.autostart else 0)
    except KvmgrError:
        _undo_create(net)
        raise
    return network_info(conn, spec.name)


def _undo_create(net: libvirt.virNetwork) -> None:
    try:
        if net.isActive():
            net.destroy()
        net.undefine()
    except libvirt.libvirtError:
        pass  # the original error is the one worth reporting


# ----------------------------------------------------------------------------------- lifecycle
def start_network(conn: Connection, name: str) -> NetworkInfo:
    net = _lookup(conn, name)
    if net.isActive():
        raise InvalidState(f"network {name!r} is already running")
    with libvirt_errors(f"starting network {name}"):
        net.create()
    return network_info(conn, name)


def stop_network(conn: Connection, name: str, *, force: bool = False) -> NetworkInfo:
    """Stop a network; refuses while running VMs are attached (they would lose it) unless forced."""
    net = _lookup(conn, name)
    if not net.isActive():
        raise InvalidState(f"network {name!r} is not running")
    if not force:
        running = _running_vms(conn, vms_using(conn, name))
        if running:
            raise InvalidState(
                f"network {name!r} is used by running VMs: {', '.join(running)}",
                hint="stop those VMs first, or add --force to cut them off",
            )
    with libvirt_errors(f"stopping network {name}"):
        net.destroy()
    return network_info(conn, name)


def _running_vms(conn: Connection, names: list[str]) -> list[str]:
    running = []
    for vm in names:
        try:
            if conn.virconn.lookupByName(vm).isActive():
                running.append(vm)
        except libvirt.libvirtError:
            continue  # gone meanwhile: not running
    return running


def set_autostart(conn: Connection, name: str, enabled: bool) -> NetworkInfo:
    net = _lookup(conn, name)
    with libvirt_errors(f"setting autostart of network {name}"):
        net.setAutostart(1 if enabled else 0)
    return network_info(conn, name)


def delete_network(conn: Connection, name: str, *, force: bool = False) -> None:
    """Stop and undefine a network; refuses while any VM uses it unless ``force``."""
    net = _lookup(conn, name)
    users = vms_using(conn, name)
    if users and not force:
        raise InvalidState(
            f"network {name!r} is used by VMs: {', '.join(users)}",
            hint="detach or delete those VMs first, or add --force",
        )
    with libvirt_errors(f"deleting network {name}"):
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()


# ----------------------------------------------------------------------------------- DHCP
def normalize_mac(mac: str) -> str:
    text = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(text):
        raise InvalidInput(
            f"MAC address {mac!r} is not valid", hint="use the form 52:54:00:12:34:56"
        )
    if int(text[:2], 16) & 1:
        raise InvalidInput(
            f"MAC address {mac!r} is a multicast address",
            hint="use a unicast MAC, e.g. 52:54:00:...",
        )
    return text


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


# ----------------------------------------------------------------------------------- guest IPs
IP_SOURCES = (
    ("lease", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE),
    ("agent", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT),
    ("arp", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP),
)


def discover_ips(
    conn: Connection, domain: libvirt.virDomain | str, *, known_running: bool = False
) -> list[tuple[str, str, str]]:
    """A running VM's addresses as ``(mac, ip, source)``, from the first source that answers.

    Sources in order: libvirt's DHCP leases (networks it runs dnsmasq for), the guest agent, the
    daemon's ARP table (bridged guests that sent traffic) through libvirt or, when libvirt's ARP
    source fails, read from the local daemon's namespace.  Loopback and IPv6 link-local addresses
    are left out.  A VM that is not running has no addresses: the answer is an empty list.
    ``known_running`` skips asking for the state when the caller has just read it (a listing
    read it in bulk: one round trip less per running VM).
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


def _arp_from_daemon_table(conn: Connection, dom: libvirt.virDomain) -> list[tuple[str, str, str]]:
    table = _daemon_proc_net(conn, "arp")
    if table is None:
        return []
    with libvirt_errors(f"reading VM {dom.name()}"):
        domain = Domain.from_xml(dom.XMLDesc(0))
    macs = {iface.mac.lower() for iface in domain.devices.interfaces if iface.mac}
    found = {(mac, ip, "arp") for mac, ip in parse_arp_table(table.read_text()) if mac in macs}
    return sorted(found, key=lambda item: (item[0], ipaddress.ip_address(item[1])))


def _domain(conn: Connection, domain: libvirt.virDomain | str) -> libvirt.virDomain:
    if not isinstance(domain, str):
        return domain
    validate_existing_name(domain, what="VM name")
    try:
        return conn.virconn.lookupByName(domain)
    except libvirt.libvirtError as err:
        raise NotFound(f"VM {domain!r} does not exist", hint="see 'kvmgr vm list'") from err


def _addresses(answer: dict[str, Any] | None, source: str) -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    for details in (answer or {}).values():
        mac = (details.get("hwaddr") or "").lower()
        for entry in details.get("addrs") or []:
            address = ipaddress.ip_address(entry["addr"])
            if address.is_loopback or address.is_link_local:
                continue
            found.append((mac, str(address), source))
    return sorted(
        set(found), key=lambda item: (item[0], ipaddress.ip_address(item[1]).version, item[1])
    )
