"""Virtual networks: NAT, isolated, routed and host-bridged; DHCP reservations and leases.

Guests' addresses are found in :mod:`kvmgr.services.addresses`.

Everything goes through libvirt's network API, so it works the same against a remote daemon.

What lives here: listing networks and the VMs using them, creating one from a
:class:`NetworkSpec` (validated, journaled; a network libvirt refuses to start is undefined
again), start/stop/autostart/delete, host bridges the daemon sees, MAC addresses.  Which subnet a
new network gets, what counts as "in use" and the DHCP range live in
:mod:`kvmgr.services.network_subnets`; reservations and leases in
:mod:`kvmgr.services.networks_dhcp` (their names are exported here too: docs/PYTHON_API.md
documents ``reserve`` and ``leases`` as this module's).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import (
    AlreadyExists,
    InvalidInput,
    InvalidState,
    NotFound,
    Unsupported,
    libvirt_errors,
    translate,
)
from kvmgr.names import validate_existing_name, validate_name
from kvmgr.services.daemon_ns import daemon_pid, netns_name
from kvmgr.services.network_subnets import (
    DEFAULT_SUBNET_SEARCH,
    Subnet,
    _ipv4,
    _subnet_of,
    check_subnet_free,
    default_dhcp_range,
    parse_dhcp_range,
    parse_subnet,
    pick_free_subnet,
)
from kvmgr.services.object_undo import NETWORK_DELETE, NETWORK_FINISH_DELETE, STEP_DONE
from kvmgr.services.steps import Steps, owned_steps
from kvmgr.xml.domain import Domain
from kvmgr.xml.interface import HostInterface
from kvmgr.xml.network import DHCPRange, Network, NetworkIP

MODES = ("nat", "isolated", "routed", "bridge")
_FORWARD_MODES = {"nat": "nat", "routed": "route", "bridge": "bridge"}
MAX_BRIDGE_NAME = 15  # IFNAMSIZ - 1
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_DNS_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_HOSTNAME_RE = re.compile(rf"^{_DNS_LABEL}$")


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


def check_host_bridge(conn: Connection, bridge: str) -> None:
    """Refuse a host bridge the daemon cannot see (before anything is made), naming those it
    can: libvirt's interface API answers from the daemon's own network namespace."""
    _validate_bridge_name(bridge)
    try:
        bridges = host_bridges(conn)
    except Unsupported:
        return  # no interface backend on that daemon: libvirt itself checks when VMs attach
    if bridge not in bridges:
        pid = daemon_pid(conn)
        netns = netns_name(pid) if pid else None
        where = f"network namespace {netns!r} of the libvirt daemon" if netns else "libvirt host"
        raise NotFound(
            f"host bridge {bridge!r} does not exist in the {where}",
            hint=f"create it with 'kvmgr host bridge create {bridge} --uplink IFACE'"
            + (f" (bridges there: {', '.join(bridges)})" if bridges else " (it has no bridges)"),
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
    check_host_bridge(conn, spec.bridge)


def create_network(
    conn: Connection, spec: NetworkSpec, *, steps: Steps | None = None
) -> NetworkInfo:
    """Define, start and (by default) autostart a network; undone if a step fails (journaled in
    ``steps``, so a killed process's next kvmgr undoes it too)."""
    subnet = _validate_spec(conn, spec)  # refuses a name in use: the undo would delete it
    model = build_network_xml(spec, subnet)
    with owned_steps(conn, steps) as journal:
        journal.undo_with(NETWORK_DELETE, name=spec.name)
        with libvirt_errors(f"defining network {spec.name}"):
            net = conn.virconn.networkDefineXML(model.to_xml())
        with libvirt_errors(f"starting network {spec.name}"):
            net.create()
            net.setAutostart(1 if spec.autostart else 0)
    return network_info(conn, spec.name)


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


def delete_network(
    conn: Connection, name: str, *, force: bool = False, steps: Steps | None = None
) -> None:
    """Stop and undefine a network; refuses while any VM uses it unless ``force``.  Journaled
    as its intent (``network.finish_delete``) before it acts: recovery finishes it."""
    net = _lookup(conn, name)
    users = vms_using(conn, name)
    if users and not force:
        raise InvalidState(
            f"network {name!r} is used by VMs: {', '.join(users)}",
            hint="detach or delete those VMs first, or add --force",
        )
    with owned_steps(conn, steps) as journal:
        journal.finish_with(NETWORK_FINISH_DELETE, name=name, force=force)
        with libvirt_errors(f"deleting network {name}"):
            if net.isActive():
                net.destroy()
                journal.finish_with(STEP_DONE, what=f"network {name} stopped")
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


# Reservations and leases have their own module; their names stay here for callers.
from kvmgr.services.networks_dhcp import leases, reserve, unreserve  # noqa: E402  (imports the above)

__all__ = [
    "MAX_BRIDGE_NAME",
    "MODES",
    "Lease",
    "NetworkInfo",
    "NetworkSpec",
    "Reservation",
    "build_network_xml",
    "check_host_bridge",
    "create_network",
    "delete_network",
    "host_bridges",
    "leases",
    "list_networks",
    "network_info",
    "normalize_mac",
    "reserve",
    "set_autostart",
    "start_network",
    "stop_network",
    "unreserve",
    "vms_using",
]
