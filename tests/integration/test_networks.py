"""Networks with real guests on the real daemon (qemu:///system, running in netns ``kvmgr``).

The seed's isolation example: VM ``t-net-web`` sits on NAT network ``t-net-nat`` (10.240.10/24)
and on isolated network ``t-net-iso`` (10.240.11/24); VM ``t-net-db`` only on ``t-net-iso``.
Both isolated NICs have DHCP reservations.  The guests prove: reserved IPs are handed out, web
reaches db on the isolated net, db has no default route and cannot reach the NAT gateway.

A third guest sits on ``t-net-br``, a bridge-mode network on ``kvt-br0``, a Linux bridge the test
creates in the daemon's namespace with its own dnsmasq (10.240.12/24): its address comes from
that dnsmasq, and ``discover_ips`` finds it through ARP (or the namespace's neighbour table).

Traffic goes only to these guests and to the bridges this module made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.errors import AlreadyExists, InvalidState
from kvmgr.services import addresses, network_subnets, networks
from kvmgr.services.networks import NetworkSpec
from kvmgr.xml.domain import Interface
from tests.integration.guest import GuestShell, demo_domain, eventually

pytestmark = pytest.mark.integration

NETNS = "kvmgr"  # the daemon's network namespace
NAT, ISO, BR = "t-net-nat", "t-net-iso", "t-net-br"
WEB, DB, BRVM = "t-net-web", "t-net-db", "t-net-brvm"
WEB_NAT_MAC, WEB_ISO_MAC = "52:54:00:f0:10:10", "52:54:00:f0:11:10"
DB_MAC, BRVM_MAC = "52:54:00:f0:11:20", "52:54:00:f0:12:30"
WEB_ISO_IP, DB_IP = "10.240.11.10", "10.240.11.20"
NAT_GATEWAY = "10.240.10.1"
BRIDGE, BRIDGE_ADDR = "kvt-br0", "10.240.12.1"
BRIDGE_RANGE = ("10.240.12.100", "10.240.12.150")


def _drop_vm(conn: Connection, name: str) -> None:
    try:
        dom = conn.virconn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefine()


def _drop_network(conn: Connection, name: str) -> None:
    try:
        net = conn.virconn.networkLookupByName(name)
    except libvirt.libvirtError:
        return
    if net.isActive():
        net.destroy()
    net.undefine()


def _define_vm(conn: Connection, iso: str, name: str, nics: list[tuple[str, str]]) -> None:
    """A demo guest (256 MiB, 1 vCPU) with one NIC per (network, MAC), in that order."""
    dom = demo_domain(conn, name, iso, network=nics[0][0])
    dom.devices.interfaces[0].mac = nics[0][1]
    for network, mac in nics[1:]:
        nic = Interface()
        nic.type, nic.source_network, nic.mac, nic.model = "network", network, mac, "virtio"
        dom.devices.interfaces.append(nic)
    conn.virconn.defineXML(dom.to_xml())


def _boot(conn: Connection, names: list[str], stack: contextlib.ExitStack) -> dict[str, GuestShell]:
    """Start each VM and attach to its console at once, so its boot markers are not missed
    (a console attached after the guest's shell started may never see them); ``shell.ip`` is
    the address the guest reported.  All are started before any is waited for: the guests boot
    side by side (one emulated CPU each) instead of one after the other."""
    shells = {}
    for name in names:
        conn.virconn.lookupByName(name).create()
        shells[name] = stack.enter_context(GuestShell.open(conn, name))
    for shell in shells.values():
        shell.wait_ready(timeout=240)
    return shells


# ----------------------------------------------------------------------------- isolation lab
@dataclass
class Lab:
    conn: Connection
    shells: dict[str, GuestShell]
    ips: dict[str, str]


@pytest.fixture(scope="module")
def lab(conn: Connection, iso: str) -> Iterator[Lab]:
    undo = contextlib.ExitStack()
    with undo:
        for name in (WEB, DB):
            undo.callback(_drop_vm, conn, name)
        for name in (NAT, ISO):
            undo.callback(_drop_network, conn, name)
        for name in (WEB, DB, NAT, ISO):  # leftovers of an interrupted run
            _drop_vm(conn, name)
            _drop_network(conn, name)
        networks.create_network(
            conn, NetworkSpec(NAT, mode="nat", subnet="10.240.10.0/24", bridge="kvt-nat0")
        )
        networks.create_network(
            conn, NetworkSpec(ISO, mode="isolated", subnet="10.240.11.0/24", bridge="kvt-iso0")
        )
        _define_vm(conn, iso, WEB, [(NAT, WEB_NAT_MAC), (ISO, WEB_ISO_MAC)])
        _define_vm(conn, iso, DB, [(ISO, DB_MAC)])
        networks.reserve(conn, ISO, DB_IP, vm=DB, hostname="db")
        networks.reserve(conn, ISO, WEB_ISO_IP, mac=WEB_ISO_MAC, hostname="web")
        shells = _boot(conn, [WEB, DB], undo)
        ips = {name: shell.ip or "" for name, shell in shells.items()}
        # the demo guest asks DHCP on its first NIC only; web's isolated NIC asks here
        shells[WEB].run("udhcpc -i eth1 -s /etc/kvmgr/udhcpc.sh -n -q -t 10 -T 2", timeout=60)
        yield Lab(conn, shells, ips)


def test_isolated_guests_get_their_reserved_ips(lab: Lab) -> None:
    assert lab.ips[DB] == DB_IP
    assert f"inet {WEB_ISO_IP}/24" in lab.shells[WEB].run("ip -4 addr show eth1")
    handed_out = {(lease.mac, lease.ip) for lease in networks.leases(lab.conn, ISO)}
    assert {(DB_MAC, DB_IP), (WEB_ISO_MAC, WEB_ISO_IP)} <= handed_out


def test_nat_guest_gets_a_lease_from_the_range(lab: Lab) -> None:
    web_ip = ipaddress.IPv4Address(lab.ips[WEB])
    assert (
        ipaddress.IPv4Address("10.240.10.100") <= web_ip <= ipaddress.IPv4Address("10.240.10.254")
    )
    assert (WEB_NAT_MAC, str(web_ip)) in {
        (lease.mac, lease.ip) for lease in networks.leases(lab.conn, NAT)
    }
    assert (WEB_NAT_MAC, str(web_ip), "lease") in addresses.discover_ips(lab.conn, WEB)
    # the isolated DHCP server gives no router: web keeps its NAT default route
    assert f"default via {NAT_GATEWAY}" in lab.shells[WEB].run("ip route")


def test_web_reaches_db_on_the_isolated_network(lab: Lab) -> None:
    lab.shells[WEB].run(f"ping -c 2 -W 3 {DB_IP}", timeout=30)


def test_db_has_no_route_out(lab: Lab) -> None:
    routes = lab.shells[DB].run("ip route")
    assert "default" not in routes
    assert "10.240.11.0/24" in routes
    status, output = lab.shells[DB].run_status(f"ping -c 2 -W 2 {NAT_GATEWAY}", timeout=30)
    assert status != 0, output
    # ...while the isolated bridge itself answers, so the failure above is not a dead guest
    lab.shells[DB].run("ping -c 1 -W 3 10.240.11.1", timeout=30)


def test_networks_in_use_refuse_delete_and_list_their_vms(lab: Lab) -> None:
    with pytest.raises(InvalidState, match=f"{DB}, {WEB}"):
        networks.delete_network(lab.conn, ISO)
    with pytest.raises(InvalidState, match="running VMs"):
        networks.stop_network(lab.conn, NAT)
    by_name = {info.name: info for info in networks.list_networks(lab.conn)}
    assert by_name[ISO].vms == [DB, WEB]
    assert by_name[ISO].active and by_name[NAT].vms == [WEB]


# ----------------------------------------------------------------------------- host bridge
def _netns(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", NETNS, *argv], check=True, capture_output=True, text=True
    )


@contextlib.contextmanager
def _host_bridge_with_dhcp(workdir: Path) -> Iterator[Path]:
    """kvt-br0 in the daemon's namespace with a dnsmasq of its own; yields its lease file."""
    _netns("ip", "link", "add", BRIDGE, "type", "bridge")
    dnsmasq: subprocess.Popen[str] | None = None
    try:
        _netns("ip", "addr", "add", f"{BRIDGE_ADDR}/24", "dev", BRIDGE)
        _netns("ip", "link", "set", BRIDGE, "up")
        leases = workdir / "dnsmasq.leases"
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", NETNS, "dnsmasq", "--keep-in-foreground",
             "--conf-file=/dev/null", "--port=0", "--user=root",
             f"--interface={BRIDGE}", "--bind-interfaces", "--except-interface=lo",
             f"--dhcp-range={BRIDGE_RANGE[0]},{BRIDGE_RANGE[1]},255.255.255.0,1h",
             f"--dhcp-leasefile={leases}", f"--pid-file={workdir / 'dnsmasq.pid'}",
             f"--log-facility={workdir / 'dnsmasq.log'}"],
            text=True,
        )  # fmt: skip
        yield leases
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(10)
        _netns("ip", "link", "del", BRIDGE)


def test_guest_on_a_host_bridge_gets_lan_dhcp_and_is_found_by_arp(
    conn: Connection, iso: str, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as undo:
        _drop_vm(conn, BRVM)
        _drop_network(conn, BR)
        leases = undo.enter_context(_host_bridge_with_dhcp(tmp_path))
        undo.callback(_drop_network, conn, BR)
        undo.callback(_drop_vm, conn, BRVM)
        # the bridge's subnet is known to no libvirt network, only to the daemon's routes
        with pytest.raises(AlreadyExists, match=f"host route via {BRIDGE}"):
            networks.create_network(conn, NetworkSpec("t-net-clash", subnet="10.240.12.0/24"))
        assert "t-net-clash" not in conn.virconn.listNetworks()
        assert str(network_subnets.pick_free_subnet(conn, "10.240.12.0/24,10.240.13.0/24")) == (
            "10.240.13.0/24"
        )
        info = networks.create_network(conn, NetworkSpec(BR, mode="bridge", bridge=BRIDGE))
        assert (info.mode, info.bridge, info.subnet) == ("bridge", BRIDGE, None)
        _define_vm(conn, iso, BRVM, [(BR, BRVM_MAC)])
        shell = _boot(conn, [BRVM], undo)[BRVM]
        ip = shell.ip or ""

        low, high = (ipaddress.IPv4Address(a) for a in BRIDGE_RANGE)
        assert low <= ipaddress.IPv4Address(ip) <= high
        assert f"{BRVM_MAC} {ip}" in leases.read_text()  # it came from the LAN's dnsmasq
        assert conn.virconn.lookupByName(BRVM).interfaceAddresses(
            libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0
        ) in ({}, None)  # libvirt runs no DHCP here: the lease source cannot answer

        # traffic from the guest puts it in the daemon namespace's ARP table
        shell.run(f"ping -c 1 -W 3 {BRIDGE_ADDR}", timeout=30)
        found: list[tuple[str, str, str]] = []

        def _some_found() -> bool:
            found[:] = addresses.discover_ips(conn, BRVM)
            return bool(found)

        eventually(_some_found, 10)
        # libvirt's ARP source when it works, else the namespace's neighbour table over netlink
        assert found in ([(BRVM_MAC, ip, "arp")], [(BRVM_MAC, ip, "neighbour")])
