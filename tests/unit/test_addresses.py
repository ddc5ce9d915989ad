"""Parsers behind bridged guests' addresses: ARP table, netlink neighbour dump, DHCP ACK and ARP
frames heard on a tap, the learned addresses kept in live metadata; and the bridge check.

The frames and netlink messages are built here byte by byte from the RFC 2131 / rtnetlink
layouts, so each parser is checked against the wire format, not against itself."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import InvalidInput, NotFound
from kvmgr.services import address_learning, addresses, daemon_ns, networks
from kvmgr.services.address_learning import Learned, parse_frame, remembered
from kvmgr.services.create import VMSpec, check_request
from kvmgr.services.create_policy import DiskRequest, NicRequest
from kvmgr.services.resources import add_nic
from kvmgr.xml.domain import Domain

GUEST = "52:54:00:f0:31:07"
SERVER = "02:00:00:00:31:01"
NOW = 1_800_000_000.0


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ipv4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def _dhcp_frame(
    msg_type: int, yiaddr: str, *, lease: int | None = 3600, vlan: bool = False
) -> bytes:
    bootp = bytearray(236)
    bootp[0], bootp[1], bootp[2] = 2, 1, 6  # BOOTREPLY, Ethernet, 6-byte MAC
    bootp[16:20] = _ipv4(yiaddr)
    bootp[28:34] = _mac(GUEST)
    options = b"\x63\x82\x53\x63" + bytes([53, 1, msg_type]) + b"\x00"  # a pad on the way
    if lease is not None:
        options += bytes([51, 4]) + struct.pack("!I", lease)
    options += bytes([54, 4]) + _ipv4("10.240.31.1") + b"\xff"
    payload = bytes(bootp) + options
    udp = struct.pack("!HHHH", 67, 68, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, _ipv4("10.240.31.1"),
        _ipv4(yiaddr),
    ) + udp  # fmt: skip
    tag = struct.pack("!HH", 0x8100, 7) if vlan else b""
    return _mac(GUEST) + _mac(SERVER) + tag + struct.pack("!H", 0x0800) + ip


def _arp_frame(sender_mac: str, sender_ip: str, target_ip: str) -> bytes:
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + _mac(sender_mac) + _ipv4(sender_ip)
    arp += b"\x00" * 6 + _ipv4(target_ip)
    return b"\xff" * 6 + _mac(sender_mac) + struct.pack("!H", 0x0806) + arp


# ----------------------------------------------------------------------------- frames
def test_a_dhcp_ack_gives_the_clients_address_and_lease_end() -> None:
    fact = parse_frame(_dhcp_frame(5, "10.240.31.120"), now=NOW)
    assert fact == Learned(GUEST, "10.240.31.120", "dhcp-snoop", NOW, NOW + 3600)
    tagged = parse_frame(_dhcp_frame(5, "10.240.31.121", lease=None, vlan=True), now=NOW)
    assert tagged == Learned(GUEST, "10.240.31.121", "dhcp-snoop", NOW, None)


@pytest.mark.parametrize("msg_type", [2, 6])  # OFFER (not taken yet), NAK
def test_other_dhcp_replies_teach_nothing(msg_type: int) -> None:
    assert parse_frame(_dhcp_frame(msg_type, "10.240.31.120"), now=NOW) is None


def test_an_ack_to_an_inform_has_no_address_and_is_ignored() -> None:
    assert parse_frame(_dhcp_frame(5, "0.0.0.0"), now=NOW) is None


def test_arp_gives_the_senders_address_but_not_a_probes() -> None:
    fact = parse_frame(_arp_frame(GUEST, "10.240.31.120", "10.240.31.1"), now=NOW)
    assert fact == Learned(GUEST, "10.240.31.120", "arp-snoop", NOW)
    assert parse_frame(_arp_frame(GUEST, "0.0.0.0", "10.240.31.120"), now=NOW) is None


@pytest.mark.parametrize("cut", [0, 13, 20, 40, 200, 270])
def test_truncated_frames_are_ignored(cut: int) -> None:
    assert parse_frame(_dhcp_frame(5, "10.240.31.120")[:cut], now=NOW) is None
    assert (
        parse_frame(_arp_frame(GUEST, "10.240.31.120", "10.240.31.1")[: cut // 10], now=NOW) is None
    )


# ----------------------------------------------------------------------------- neighbours
def _neigh(ip: str, mac: str | None, state: int, ifindex: int = 5) -> bytes:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    body = struct.pack("=BBHiHBB", family, 0, 0, ifindex, state, 0, 1)
    packed = ipaddress.ip_address(ip).packed
    body += struct.pack("=HH", 4 + len(packed), 1) + packed  # NDA_DST
    if mac is not None:
        body += struct.pack("=HH", 10, 2) + _mac(mac) + b"\x00\x00"  # NDA_LLADDR, padded to 4
    return struct.pack("=LHHLL", 16 + len(body), 28, 2, 1, 0) + body


def test_neighbour_dump_keeps_entries_with_a_known_mac() -> None:
    data = (
        _neigh("10.240.31.120", GUEST, 0x02)  # REACHABLE
        + _neigh("2001:db8::31:7", GUEST, 0x04)  # STALE: the mapping is still known
        + _neigh("10.240.31.121", None, 0x01)  # INCOMPLETE: no MAC yet
        + _neigh("10.240.31.122", "52:54:00:f0:31:08", 0x20)  # FAILED
    )
    entries, done = daemon_ns.parse_neighbour_messages(data)
    assert entries == [(GUEST, "10.240.31.120", 5), (GUEST, "2001:db8::31:7", 5)]
    assert not done
    finished, done = daemon_ns.parse_neighbour_messages(
        struct.pack("=LHHLL", 20, 3, 2, 1, 0) + b"\0" * 4
    )
    assert (finished, done) == ([], True)


def test_a_netlink_error_is_raised() -> None:
    error = struct.pack("=LHHLL", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + b"\0" * 16
    with pytest.raises(OSError, match="netlink"):
        daemon_ns.parse_neighbour_messages(error)


def test_our_own_neighbour_table_can_be_dumped() -> None:
    # any namespace has one (maybe empty); the answer must parse to the end
    assert all(len(entry) == 3 for entry in daemon_ns.dump_neighbours())


def test_arp_table_keeps_complete_entries_only() -> None:
    table = (
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "10.240.12.105    0x1         0x2         52:54:00:F0:12:30     *        kvt-br0\n"
        "10.240.12.106    0x1         0x0         00:00:00:00:00:00     *        kvt-br0\n"
    )
    assert addresses.parse_arp_table(table) == [("52:54:00:f0:12:30", "10.240.12.105")]


# ----------------------------------------------------------------------------- kept facts
def test_learned_addresses_are_read_back_until_their_lease_ends() -> None:
    ns = address_learning.LEARNED_NS
    domain = Domain.from_xml(
        f"""<domain type='qemu'><name>x</name><metadata>
        <l:learned xmlns:l='{ns}'>
          <l:address mac='{GUEST.upper()}' ip='10.240.31.120' source='dhcp-snoop'
                     seen='{NOW:.0f}' until='{NOW + 60:.0f}'/>
          <l:address mac='52:54:00:f0:31:08' ip='10.240.31.5' source='arp-snoop' seen='{NOW:.0f}'/>
          <l:address mac='52:54:00:f0:31:09' ip='not-an-ip' source='arp-snoop' seen='1'/>
        </l:learned></metadata></domain>"""
    )
    assert remembered(domain, now=NOW + 30) == [
        Learned(GUEST, "10.240.31.120", "dhcp-snoop", NOW, NOW + 60),
        Learned("52:54:00:f0:31:08", "10.240.31.5", "arp-snoop", NOW),
    ]
    assert [fact.ip for fact in remembered(domain, now=NOW + 61)] == ["10.240.31.5"]


def test_a_daemon_that_is_not_local_cannot_be_listened_to() -> None:
    with open_connection("test:///default") as default:
        watch = addresses.AddressWatch(default, "test")
        assert watch.learner is None and "not local" in (watch.why_not or "")
        found, why_not = addresses.wait_for_addresses(default, "test", 0.0)
    assert found and found[0][2] == "lease"  # the test driver answers as a lease
    assert why_not and "not local" in why_not


# ----------------------------------------------------------------------------- bridge check
@pytest.fixture
def host(tmp_path: Path) -> Iterator[Connection]:
    node = tmp_path / "node.xml"
    node.write_text(
        "<node><interface type='bridge' name='kvt-br0'><start mode='onboot'/>"
        "<bridge stp='off'/></interface>"
        "<domain type='test'><name>t-bd-vm1</name><memory>262144</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os><devices/></domain></node>"
    )
    with open_connection(f"test://{node}") as conn:
        yield conn


def test_a_missing_bridge_is_refused_before_anything_is_made(host: Connection) -> None:
    spec = VMSpec("t-bd-vm", memory=256 << 20, vcpus=1, disks=[DiskRequest(size=1 << 30)],
                  nics=[NicRequest(kind="bridge", source="kvt-nope0")])  # fmt: skip
    with pytest.raises(NotFound, match="host bridge 'kvt-nope0' does not exist") as err:
        check_request(host, spec)
    assert "bridges there: kvt-br0" in (err.value.hint or "")
    networks.check_host_bridge(host, "kvt-br0")  # the one that exists passes
    with pytest.raises(InvalidInput):
        networks.check_host_bridge(host, "no/such")
    assert [dom.name() for dom in host.virconn.listAllDomains(0)] == ["t-bd-vm1"]
    with pytest.raises(NotFound, match="kvt-nope0"):
        add_nic(host, "t-bd-vm1", bridge="kvt-nope0", config=True)
    assert "<interface" not in host.virconn.lookupByName("t-bd-vm1").XMLDesc(0)


# ----------------------------------------------------------------------------- the BPF filter
@pytest.mark.skipif(not hasattr(socket, "AF_PACKET"), reason="Linux packet sockets only")
def test_the_kernel_filter_passes_arp_and_dhcp_replies_only() -> None:
    # frames sent on loopback and read back through a socket carrying kvmgr's filter
    try:
        sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        listener = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    except PermissionError:
        pytest.skip("packet sockets need CAP_NET_RAW")
    with sender, listener:
        address_learning._attach_filter(listener)
        listener.bind(("lo", 0x0003))
        listener.settimeout(0.2)
        sender.bind(("lo", 0))
        dns = bytearray(_dhcp_frame(5, "10.240.31.120"))
        dns[14 + 20 + 2 : 14 + 20 + 4] = struct.pack("!H", 53)  # the same frame, to port 53
        wanted = [
            _arp_frame(GUEST, "10.240.31.120", "10.240.31.1"),
            _dhcp_frame(5, "10.240.31.120"),
        ]
        for frame in (bytes(dns), *wanted):
            sender.send(frame)
        heard = set()
        with contextlib.suppress(TimeoutError):
            while True:
                heard.add(listener.recv(2048))
    assert heard == set(wanted)


def test_learned_facts_are_kept_in_live_metadata_and_a_lease_outlives_arp(host: Connection) -> None:
    dom = host.virconn.lookupByName("t-bd-vm1")
    assert dom.isActive()

    now = float(int(time.time()))  # remember() drops ended leases by the real clock

    def kept() -> list[Learned]:
        return remembered(Domain.from_xml(dom.XMLDesc(0)), now=now)

    lease = Learned(GUEST, "10.240.31.120", "dhcp-snoop", now, now + 3600)
    assert address_learning.remember(dom, [lease])
    assert kept() == [lease]
    assert address_learning.remember(dom, [Learned(GUEST, "10.240.31.120", "arp-snoop", now + 5)])
    assert kept() == [lease]  # the same address by ARP: the lease's end is kept
    moved = Learned(GUEST, "10.240.31.121", "arp-snoop", now + 9)
    assert address_learning.remember(dom, [moved])
    assert kept() == [moved]  # another address: the newest fact wins
    inactive = Domain.from_xml(dom.XMLDesc(1 << 1))  # VIR_DOMAIN_XML_INACTIVE: never saved
    assert remembered(inactive, now=now) == []
