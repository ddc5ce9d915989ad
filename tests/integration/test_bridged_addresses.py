"""A bridged guest whose address only the LAN knows (issue 16 item 2), on the real daemon.

The "LAN" is a namespace of its own, ``kvt-bdlan``, with its own dnsmasq as the DHCP server on
one end of a veth pair; the other end is a port of ``kvt-bdbr0``, a bridge without any address
in the daemon's namespace (``kvmgr``).  The demo guest sits on ``--network bridge=kvt-bdbr0``
and takes its lease from that dnsmasq.  Nobody pings it and the host has no address on that
LAN, so libvirt has no lease, there is no agent and no ARP or neighbour entry: before this
change ``vm create --wait ip`` timed out.  kvmgr hears the guest's DHCP ACK on its tap device
and reports the address with its source, ``dhcp-snoop``; ``vm ip`` finds it afterwards, and
after a restart (live metadata gone with the old run) ``vm ip --wait`` learns it again, and an
ARP request the guest sends to the LAN server is heard as ``arp-snoop``.  The
bridge checks (``vm create``, ``net create`` refuse a bridge missing in the daemon's namespace)
and the bridge wizard's default namespace are checked against the same setup.

Traffic goes only between the guest and the namespaces this module made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.services import daemon_ns
from kvmgr.services.address_learning import AddressLearner

from .conftest import Cleanup
from .guest import GuestShell

pytestmark = pytest.mark.integration

PREFIX = "t-bd-"
VM = f"{PREFIX}guest"
DAEMON_NS, LAN_NS = "kvmgr", "kvt-bdlan"
BRIDGE, PORT, LAN_END = "kvt-bdbr0", "kvt-bdv0", "kvt-bdv1"
LAN_SERVER = "10.240.31.1"
LAN_RANGE = ("10.240.31.100", "10.240.31.150")
KVMGR = [sys.executable, "-m", "kvmgr.cli.main"]


def kvmgr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KVMGR, "-c", "qemu:///system", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, text=True)


def _drop_links() -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip(DAEMON_NS, "link", "del", PORT)  # takes its peer with it, wherever it is
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip(DAEMON_NS, "link", "del", BRIDGE)
    subprocess.run(["ip", "netns", "del", LAN_NS], capture_output=True, check=False)


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The LAN namespace with its dnsmasq, joined to the daemon's kvt-bdbr0; yields the leases."""
    workdir = tmp_path_factory.mktemp("lan")
    _drop_links()
    subprocess.run(["ip", "netns", "add", LAN_NS], check=True)
    dnsmasq: subprocess.Popen[str] | None = None
    try:
        _ip(DAEMON_NS, "link", "add", BRIDGE, "type", "bridge")
        _ip(DAEMON_NS, "link", "add", PORT, "type", "veth", "peer", "name", LAN_END)
        _ip(DAEMON_NS, "link", "set", LAN_END, "netns", LAN_NS)
        _ip(DAEMON_NS, "link", "set", PORT, "master", BRIDGE)
        for link in (PORT, BRIDGE):
            _ip(DAEMON_NS, "link", "set", link, "up")
        _ip(LAN_NS, "addr", "add", f"{LAN_SERVER}/24", "dev", LAN_END)
        _ip(LAN_NS, "link", "set", LAN_END, "up")
        _ip(LAN_NS, "link", "set", "lo", "up")
        leases = workdir / "dnsmasq.leases"
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", LAN_NS, "dnsmasq", "--keep-in-foreground",
             "--conf-file=/dev/null", "--port=0", "--user=root", f"--interface={LAN_END}",
             "--bind-interfaces", f"--dhcp-range={LAN_RANGE[0]},{LAN_RANGE[1]},255.255.255.0,1h",
             f"--dhcp-leasefile={leases}", f"--pid-file={workdir / 'dnsmasq.pid'}",
             f"--log-facility={workdir / 'dnsmasq.log'}"],
            text=True,
        )  # fmt: skip
        yield leases
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(10)
        _drop_links()


def _in_range(ip: str) -> bool:
    low, high = (ipaddress.IPv4Address(a) for a in LAN_RANGE)
    return low <= ipaddress.IPv4Address(ip) <= high


def test_a_missing_bridge_is_refused_before_anything_is_made(
    conn: Connection, lan: Path, demo_iso: Path, cleanup: Cleanup
) -> None:
    cleanup.prefix(PREFIX)
    name = cleanup.vm(f"{PREFIX}nobridge")
    done = kvmgr(
        "vm", "create", name, "--iso", str(demo_iso), "--memory", "256M", "--vcpus", "1",
        "--disk", "none", "--network", "bridge=kvt-bdnope", "--graphics", "none",
    )  # fmt: skip
    assert done.returncode != 0
    assert "host bridge 'kvt-bdnope' does not exist in the network namespace 'kvmgr'" in (
        done.stderr
    )
    assert BRIDGE in done.stderr  # the hint lists the bridges that do exist there
    assert name not in [dom.name() for dom in conn.virconn.listAllDomains(0)]
    made = kvmgr("net", "create", f"{PREFIX}net", "--mode", "bridge", "--bridge", "kvt-bdnope")
    assert made.returncode != 0 and "kvt-bdnope" in made.stderr
    assert f"{PREFIX}net" not in conn.virconn.listNetworks()


def test_the_bridge_wizard_works_where_the_daemon_runs(lan: Path) -> None:
    listed = kvmgr("host", "bridge", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert BRIDGE in {row["name"] for row in json.loads(listed.stdout)}
    assert f"network namespace {DAEMON_NS!r}, where libvirt's daemon runs" in listed.stderr
    own = kvmgr("host", "bridge", "list", "--host-netns", "-o", "json")
    assert own.returncode == 0, own.stderr
    assert BRIDGE not in {row["name"] for row in json.loads(own.stdout)}
    # create looks for the uplink there too (a dry run: nothing changes either way)
    planned = kvmgr("host", "bridge", "create", "kvt-bdx0", "--uplink", PORT, "--dry-run")
    assert f"{PORT} is already a port of {BRIDGE}" in planned.stderr  # found where it is
    elsewhere = kvmgr("host", "bridge", "create", "kvt-bdx0", "--uplink", LAN_END, "--dry-run")
    assert elsewhere.returncode != 0
    assert f"'{LAN_END}' does not exist in network namespace {DAEMON_NS}" in elsewhere.stderr


def test_bridged_guest_address_is_heard_with_its_source(
    conn: Connection, lan: Path, demo_iso: Path, cleanup: Cleanup
) -> None:
    cleanup.prefix(PREFIX)
    cleanup.vm(VM)
    done = kvmgr(
        "vm", "create", VM, "--iso", str(demo_iso), "--memory", "256M", "--vcpus", "1",
        "--disk", "none", "--network", f"bridge={BRIDGE}", "--graphics", "none",
        "--wait", "ip", "--wait-timeout", "120", "-o", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ip = json.loads(done.stdout)["ip"]
    assert _in_range(ip)
    dom = conn.virconn.lookupByName(VM)
    mac = next(line.split()[1] for line in lan.read_text().splitlines() if ip in line)
    # the lease is the LAN's own; no source libvirt knows could answer (libvirt 9.0's ARP
    # source fails outright on this host: "wrong nlmsg len")
    for source in (
        libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
        libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
    ):
        with contextlib.suppress(libvirt.libvirtError):
            assert dom.interfaceAddresses(source, 0) in ({}, None)
    neighbours = daemon_ns.run_in_daemon_netns(conn, daemon_ns.dump_neighbours)
    assert mac not in {entry[0] for entry in neighbours}  # nobody talked to it

    shown = kvmgr("vm", "ip", VM, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == [{"mac": mac, "ip": ip, "source": "dhcp-snoop"}]

    # a new run of the guest: what the old one learned went with it, and listening finds it again
    dom.destroy()
    dom.create()
    gone = kvmgr("vm", "ip", VM, "-o", "json")
    assert gone.returncode != 0 and "--wait" in gone.stderr
    heard = kvmgr("vm", "ip", VM, "--wait", "120", "-o", "json")
    assert heard.returncode == 0, heard.stderr
    ((row),) = json.loads(heard.stdout)
    assert (row["mac"], row["source"]) == (mac, "dhcp-snoop") and _in_range(row["ip"])

    # the ARP path on the same tap: the guest asks for the LAN server's MAC (traffic to the LAN
    # namespace only), and its ARP request names its own address
    with AddressLearner.open(conn, dom) as learner, GuestShell.open(conn, VM) as shell:
        shell.wait_ready(120)
        shell.run(f"ping -c 1 -W 3 {LAN_SERVER}", timeout=30)
        heard_arp = learner.poll(5.0)
    assert (mac, row["ip"], "arp-snoop") in {(f.mac, f.ip, f.source) for f in heard_arp}
