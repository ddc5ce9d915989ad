"""Networks service and ``kvmgr net`` on libvirt's test driver (a real driver, simulated host).

Each test gets a private test-driver host from a node file: one NAT network with a VM attached,
a host bridge and a host interface address, so "in use" and "overlaps" have something real to
find.  The CLI tests use ``test:///default`` (the CLI opens its own connection) and remove what
they make.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmgr.cli.common import state
from kvmgr.cli.main import app
from kvmgr.connect import Connection, open_connection
from kvmgr.errors import AlreadyExists, InvalidInput, InvalidState, NotFound, Unsupported
from kvmgr.services import addresses, network_subnets, networks
from kvmgr.services.networks import NetworkSpec
from kvmgr.xml.network import Network

# A test-driver host: the VM t-net-vm1 sits on network t-net-used (10.240.50.0/24); the host has
# bridge kvt-br0 and an address 10.240.60.5/24 on eth1.
NODE_XML = """<node>
  <network>
    <name>t-net-used</name>
    <forward mode='nat'/>
    <bridge name='kvt-used0'/>
    <ip address='10.240.50.1' prefix='24'>
      <dhcp><range start='10.240.50.100' end='10.240.50.254'/></dhcp>
    </ip>
  </network>
  <interface type='bridge' name='kvt-br0'>
    <start mode='onboot'/>
    <bridge stp='off'/>
  </interface>
  <interface type='ethernet' name='eth1'>
    <start mode='onboot'/>
    <mac address='aa:bb:cc:dd:ee:01'/>
    <protocol family='ipv4'><ip address='10.240.60.5' prefix='24'/></protocol>
  </interface>
  <domain type='test'>
    <name>t-net-vm1</name>
    <memory>262144</memory>
    <vcpu>1</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <devices>
      <interface type='network'>
        <mac address='52:54:00:00:50:01'/>
        <source network='t-net-used'/>
      </interface>
    </devices>
  </domain>
</node>
"""

# /proc/net/route as read from the daemon's namespace on the development host.
ROUTES = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    "virbr0\t007AA8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    connection = open_connection(f"test://{node}")
    yield connection
    connection.close()


def _model(conn: Connection, name: str) -> Network:
    return Network.from_xml(conn.virconn.networkLookupByName(name).XMLDesc(0))


# ----------------------------------------------------------------------------- pure policy
def test_parse_subnet_explains_host_bits_ipv6_and_tiny_subnets() -> None:
    assert network_subnets.parse_subnet("10.240.1.0/24") == ipaddress.IPv4Network("10.240.1.0/24")
    with pytest.raises(InvalidInput) as host_bits:
        network_subnets.parse_subnet("10.240.1.7/24")
    assert host_bits.value.hint == "did you mean 10.240.1.0/24?"
    with pytest.raises(Unsupported):
        network_subnets.parse_subnet("fd00::/64")
    with pytest.raises(InvalidInput, match="too small"):
        network_subnets.parse_subnet("10.240.1.0/30")
    with pytest.raises(InvalidInput):
        network_subnets.parse_subnet("lan")


def test_route_table_is_decoded_and_default_route_skipped() -> None:
    routes = network_subnets.parse_route_table(ROUTES)
    assert routes == [(ipaddress.IPv4Network("192.168.122.0/24"), "virbr0")]


def test_default_dhcp_range_leaves_low_addresses_for_reservations() -> None:
    first, last = network_subnets.default_dhcp_range(ipaddress.IPv4Network("10.240.1.0/24"))
    assert (str(first), str(last)) == ("10.240.1.100", "10.240.1.254")
    first, last = network_subnets.default_dhcp_range(ipaddress.IPv4Network("10.240.1.16/28"))
    assert (str(first), str(last)) == ("10.240.1.18", "10.240.1.30")


@pytest.mark.parametrize(
    "text",
    ["10.240.1.1-10.240.1.50", "10.240.2.10-10.240.2.20", "10.240.1.90-10.240.1.20", "x-y", "10"],
)
def test_bad_dhcp_ranges_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        network_subnets.parse_dhcp_range(text, ipaddress.IPv4Network("10.240.1.0/24"))


def test_mac_addresses_are_normalised_and_checked() -> None:
    assert networks.normalize_mac("52-54-00-AB-CD-EF") == "52:54:00:ab:cd:ef"
    with pytest.raises(InvalidInput):
        networks.normalize_mac("52:54:00:ab:cd")
    with pytest.raises(InvalidInput, match="multicast"):
        networks.normalize_mac("01:00:5e:00:00:01")


# ----------------------------------------------------------------------------- create
def test_nat_network_gets_gateway_range_domain_and_autostart(conn: Connection) -> None:
    spec = NetworkSpec("t-net-a", mode="nat", subnet="10.240.1.0/24", domain="example.lan")
    info = networks.create_network(conn, spec)
    assert (info.mode, info.subnet, info.gateway) == ("nat", "10.240.1.0/24", "10.240.1.1")
    assert (info.dhcp_start, info.dhcp_end) == ("10.240.1.100", "10.240.1.254")
    assert info.active and info.autostart and info.persistent
    model = _model(conn, "t-net-a")
    assert model.forward_mode == "nat"
    assert (model.domain_name, model.domain_local_only) == ("example.lan", True)


def test_isolated_and_routed_modes_map_to_libvirt_forward(conn: Connection) -> None:
    networks.create_network(conn, NetworkSpec("t-net-i", mode="isolated", subnet="10.240.2.0/24"))
    networks.create_network(conn, NetworkSpec("t-net-r", mode="routed", subnet="10.240.3.0/24"))
    assert not _model(conn, "t-net-i").has_forward
    assert _model(conn, "t-net-r").forward_mode == "route"
    assert networks.network_info(conn, "t-net-r").mode == "routed"


def test_free_subnet_skips_networks_and_host_addresses(conn: Connection) -> None:
    # 10.240.50/24 is a libvirt network, 10.240.60/24 a host interface address
    search = "10.240.50.0/24,10.240.60.0/24,10.240.70.0/24"
    info = networks.create_network(conn, NetworkSpec("t-net-auto", subnet_search=search))
    assert info.subnet == "10.240.70.0/24"
    with pytest.raises(AlreadyExists, match="no free /24"):
        network_subnets.pick_free_subnet(conn, "10.240.50.0/24,10.240.60.0/24")


@pytest.mark.parametrize(
    ("subnet", "user"),
    [("10.240.50.128/25", "libvirt network 't-net-used'"), ("10.240.0.0/16", "t-net-used")],
)
def test_overlap_is_refused_before_anything_is_made(
    conn: Connection, subnet: str, user: str
) -> None:
    before = conn.virconn.listNetworks()
    with pytest.raises(AlreadyExists, match=user):
        networks.create_network(conn, NetworkSpec("t-net-b", subnet=subnet))
    assert conn.virconn.listNetworks() == before


def test_overlap_with_a_host_address_is_refused(conn: Connection) -> None:
    with pytest.raises(AlreadyExists, match="host interface eth1"):
        networks.create_network(conn, NetworkSpec("t-net-b", subnet="10.240.60.0/24"))


def test_duplicate_name_is_refused(conn: Connection) -> None:
    with pytest.raises(AlreadyExists):
        networks.create_network(conn, NetworkSpec("t-net-used", subnet="10.240.9.0/24"))


def test_bridge_mode_uses_an_existing_host_bridge(conn: Connection) -> None:
    info = networks.create_network(conn, NetworkSpec("t-net-br", mode="bridge", bridge="kvt-br0"))
    assert (info.mode, info.bridge, info.subnet) == ("bridge", "kvt-br0", None)
    assert _model(conn, "t-net-br").forward_mode == "bridge"


def test_bridge_mode_with_a_missing_bridge_says_how_to_create_it(conn: Connection) -> None:
    with pytest.raises(NotFound) as missing:
        networks.create_network(conn, NetworkSpec("t-net-br", mode="bridge", bridge="kvt-nope"))
    assert "kvmgr host bridge create" in str(missing.value.hint)
    assert "t-net-br" not in conn.virconn.listNetworks()


@pytest.mark.parametrize(
    "spec",
    [
        NetworkSpec("t-net-x", mode="bridge"),
        NetworkSpec("t-net-x", mode="bridge", bridge="kvt-br0", subnet="10.240.9.0/24"),
        NetworkSpec("t-net-x", mode="bogus"),
        NetworkSpec("t-net-x", bridge="a-bridge-name-too-long"),
        NetworkSpec("t-net-x", domain="bad_domain!"),
        NetworkSpec("../x"),
    ],
)
def test_bad_specs_are_refused(conn: Connection, spec: NetworkSpec) -> None:
    with pytest.raises(InvalidInput):
        networks.create_network(conn, spec)


# ----------------------------------------------------------------------------- usage, lifecycle
def test_list_shows_attached_vms(conn: Connection) -> None:
    by_name = {info.name: info for info in networks.list_networks(conn)}
    assert by_name["t-net-used"].vms == ["t-net-vm1"]
    assert by_name["t-net-used"].bridge == "kvt-used0"


def test_delete_and_stop_refuse_while_vms_use_it(conn: Connection) -> None:
    with pytest.raises(InvalidState, match="t-net-vm1"):
        networks.delete_network(conn, "t-net-used")
    with pytest.raises(InvalidState, match="t-net-vm1"):
        networks.stop_network(conn, "t-net-used")
    networks.delete_network(conn, "t-net-used", force=True)
    assert "t-net-used" not in conn.virconn.listNetworks() + conn.virconn.listDefinedNetworks()


def test_stop_start_autostart(conn: Connection) -> None:
    networks.create_network(conn, NetworkSpec("t-net-s", subnet="10.240.4.0/24"))
    assert not networks.stop_network(conn, "t-net-s").active
    with pytest.raises(InvalidState):
        networks.stop_network(conn, "t-net-s")
    assert networks.start_network(conn, "t-net-s").active
    assert not networks.set_autostart(conn, "t-net-s", False).autostart
    with pytest.raises(NotFound):
        networks.network_info(conn, "t-net-missing")


# ----------------------------------------------------------------------------- reservations
def test_reserve_and_unreserve_by_mac_and_vm(conn: Connection) -> None:
    found = networks.reserve(conn, "t-net-used", "10.240.50.10", mac="52:54:00:AA:00:01")
    assert found == networks.Reservation("52:54:00:aa:00:01", "10.240.50.10", None)
    by_vm = networks.reserve(conn, "t-net-used", "10.240.50.11", vm="t-net-vm1", hostname="vm1")
    assert by_vm.mac == "52:54:00:00:50:01"
    hosts = [(h.mac, h.ip, h.name) for h in _model(conn, "t-net-used").ips[0].dhcp_hosts]
    assert hosts == [
        ("52:54:00:aa:00:01", "10.240.50.10", None),
        ("52:54:00:00:50:01", "10.240.50.11", "vm1"),
    ]
    networks.unreserve(conn, "t-net-used", ip="10.240.50.10")
    networks.unreserve(conn, "t-net-used", vm="t-net-vm1")
    assert networks.network_info(conn, "t-net-used").reservations == []
    with pytest.raises(NotFound):
        networks.unreserve(conn, "t-net-used", mac="52:54:00:aa:00:01")


@pytest.mark.parametrize(
    ("ip", "mac", "error"),
    [
        ("10.240.50.10", "52:54:00:aa:00:01", AlreadyExists),  # same MAC again
        ("10.240.50.10", "52:54:00:aa:00:02", AlreadyExists),  # same IP again
        ("10.240.51.10", "52:54:00:aa:00:02", InvalidInput),  # outside the subnet
        ("10.240.50.1", "52:54:00:aa:00:02", InvalidInput),  # the gateway
        ("10.240.50.255", "52:54:00:aa:00:02", InvalidInput),  # broadcast
        ("10.240.50.12", "zz:54:00:aa:00:02", InvalidInput),
        ("nope", "52:54:00:aa:00:02", InvalidInput),
    ],
)
def test_bad_reservations_are_refused(
    conn: Connection, ip: str, mac: str, error: type[Exception]
) -> None:
    networks.reserve(conn, "t-net-used", "10.240.50.10", mac="52:54:00:aa:00:01")
    with pytest.raises(error):
        networks.reserve(conn, "t-net-used", ip, mac=mac)
    assert len(networks.network_info(conn, "t-net-used").reservations) == 1


def test_reservation_needs_a_vm_on_that_network_and_a_dhcp_network(conn: Connection) -> None:
    networks.create_network(conn, NetworkSpec("t-net-c", subnet="10.240.5.0/24"))
    with pytest.raises(InvalidInput, match="no interface on network"):
        networks.reserve(conn, "t-net-c", "10.240.5.10", vm="t-net-vm1")
    networks.create_network(conn, NetworkSpec("t-net-br", mode="bridge", bridge="kvt-br0"))
    with pytest.raises(Unsupported):
        networks.reserve(conn, "t-net-br", "10.240.5.10", mac="52:54:00:aa:00:01")
    with pytest.raises(InvalidInput, match="exactly one"):
        networks.reserve(conn, "t-net-c", "10.240.5.10")


# ----------------------------------------------------------------------------- guest IPs
def test_discover_ips_reports_the_answering_source() -> None:
    # test:///default's running VM "test" has a lease-like answer for its NIC. The address
    # follows the domain's id, which grows each time an earlier test restarted it, and carries
    # into the next octet past .255 (192.168.123.7 in a whole-suite run).
    with open_connection("test:///default") as default:
        ((mac, ip, source),) = addresses.discover_ips(default, "test")
    assert (mac, source) == ("aa:bb:cc:dd:ee:ff", "lease")
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("192.168.0.0/16")


def test_discover_ips_of_a_stopped_vm_is_empty(conn: Connection) -> None:
    dom = conn.virconn.lookupByName("t-net-vm1")
    dom.destroy()
    assert addresses.discover_ips(conn, dom) == []
    with pytest.raises(NotFound):
        addresses.discover_ips(conn, "t-net-nobody")


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def cli() -> Iterator[CliRunner]:
    # test:///default keeps its state only while some connection is open: hold one
    default = open_connection("test:///default")
    yield CliRunner()
    for name in default.virconn.listNetworks() + default.virconn.listDefinedNetworks():
        if name.startswith("t-net-"):
            net = default.virconn.networkLookupByName(name)
            if net.isActive():
                net.destroy()
            net.undefine()
    state.close()
    default.close()


def _kvmgr(cli: CliRunner, *args: str) -> tuple[int, str]:
    result = cli.invoke(app, ["-c", "test:///default", *args])
    state.close()
    return result.exit_code, result.output


def test_cli_create_list_reserve_delete(cli: CliRunner) -> None:
    code, out = _kvmgr(
        cli, "net", "create", "t-net-cli", "--mode", "isolated", "--subnet", "10.240.7.0/24",
        "-o", "json",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads(out)["dhcp_range"] == "10.240.7.100-10.240.7.254"
    code, out = _kvmgr(cli, "net", "reserve", "t-net-cli", "--mac", "52:54:00:07:00:01",
                       "--ip", "10.240.7.5", "-o", "json")  # fmt: skip
    assert code == 0, out
    code, out = _kvmgr(cli, "net", "list", "-o", "json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["t-net-cli"]["mode"] == "isolated"
    assert rows["t-net-cli"]["reservations"] == [
        {"mac": "52:54:00:07:00:01", "ip": "10.240.7.5", "hostname": None}
    ]
    code, out = _kvmgr(cli, "net", "delete", "t-net-cli")
    assert code == 0, out
    code, out = _kvmgr(cli, "net", "info", "t-net-cli")
    assert code == 1
    assert "does not exist" in out


def test_cli_errors_are_one_line_with_a_hint(cli: CliRunner) -> None:
    code, out = _kvmgr(cli, "net", "create", "t-net-cli", "--subnet", "10.240.7.3/24")
    assert code == 1
    assert "error: subnet '10.240.7.3/24' is not a network address" in out
    assert "hint: did you mean 10.240.7.0/24?" in out
    assert "Traceback" not in out
