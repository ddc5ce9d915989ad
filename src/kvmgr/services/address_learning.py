"""Passive learning of a bridged guest's address from its own DHCP and ARP traffic.

A guest on a host bridge takes its lease from the LAN's DHCP server: libvirt has no lease, the
guest may have no agent, and the host's neighbour table stays empty while the host never talks
to it.  But every frame to and from the guest crosses its tap device on the daemon's host, so
kvmgr listens there: a DHCP ACK addressed to the guest's MAC carries its address (``yiaddr``)
and lease time, and an ARP packet the guest sends carries its address as the sender.

The listening socket is an AF_PACKET socket bound to the guest's tap device (``vnetN``, from
the live domain XML), opened inside the daemon's network namespace, with a classic BPF filter
that lets only ARP and UDP-to-port-68 frames through; frames are then matched to the guest's
MACs.  The tap, not the bridge: the tap carries exactly this guest's frames in both directions,
while the bridge device sees forwarded unicast (a DHCP ACK to the guest) only in promiscuous
mode.  It needs a *local* daemon and root (CAP_NET_RAW, and CAP_SYS_ADMIN to enter a daemon's
namespace); for a remote host :meth:`AddressLearner.open` says why it cannot listen.

What was learned is kept in the running domain's *live* metadata (``<learned>`` in its own XML
namespace), so a later ``vm ip`` on any kvmgr process, the control plane's included, finds it
until the guest stops (libvirt drops live metadata with the running domain) or its DHCP lease
ends.  No database: the fact belongs to the running guest on that host, and dies with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import select
import socket
import struct
import time
from dataclasses import dataclass
from types import TracebackType

import libvirt
from lxml import etree

from kvmgr.connect import Connection
from kvmgr.services.daemon_ns import daemon_pid, run_in_daemon_netns
from kvmgr.xml.domain import Domain

LEARNED_NS = "https://kvmgr.dev/xmlns/learned-addresses/1.0"
LEARNED_PREFIX = "kvmgrlearned"
_ETH_P_ALL = 0x0003
_SO_ATTACH_FILTER = 26
_ETH_ARP, _ETH_IPV4, _ETH_VLAN = 0x0806, 0x0800, 0x8100
_DHCP_MAGIC = b"\x63\x82\x53\x63"
_DHCPACK = 5
_OPT_LEASE, _OPT_TYPE, _OPT_END, _OPT_PAD = 51, 53, 255, 0

# Classic BPF (as ``tcpdump -dd 'arp or (udp dst port 68 and not ip[6:2] & 0x1fff != 0)'``):
# only ARP and unfragmented UDP to the DHCP client port reach Python, so a busy LAN costs the
# kernel a few instructions per frame, not a Python wake-up.  (code, jt, jf, k)
_FILTER = (
    (0x28, 0, 0, 12),  # ldh [12]            ethertype
    (0x15, 8, 0, _ETH_ARP),  # jeq ARP        -> accept
    (0x15, 0, 8, _ETH_IPV4),  # jeq IPv4      else drop
    (0x30, 0, 0, 23),  # ldb [23]            IP protocol
    (0x15, 0, 6, 17),  # jeq UDP             else drop
    (0x28, 0, 0, 20),  # ldh [20]            flags + fragment offset
    (0x45, 4, 0, 0x1FFF),  # jset fragment   -> drop
    (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf)   IP header length
    (0x48, 0, 0, 16),  # ldh [x+16]          UDP destination port
    (0x15, 0, 1, 68),  # jeq 68              else drop
    (0x06, 0, 0, 0x40000),  # ret accept
    (0x06, 0, 0, 0),  # ret drop
)


@dataclass(frozen=True)
class Learned:
    mac: str
    ip: str
    source: str  # "dhcp-snoop" or "arp-snoop"
    seen: float  # when (epoch seconds)
    until: float | None = None  # the DHCP lease's end, when the ACK told it


# ----------------------------------------------------------------------------------- parsing
def parse_frame(frame: bytes, now: float | None = None) -> Learned | None:
    """An Ethernet frame -> what it tells about a guest's address, or None.

    A DHCP ACK gives ``(client MAC, yiaddr)`` with the lease end; an ARP packet gives
    ``(sender MAC, sender IP)`` unless the sender IP is 0.0.0.0 (a probe proves nothing)."""
    now = time.time() if now is None else now
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    offset = 14
    if ethertype == _ETH_VLAN and len(frame) >= 18:
        ethertype, offset = struct.unpack_from("!H", frame, 16)[0], 18
    payload = frame[offset:]
    if ethertype == _ETH_ARP:
        return _parse_arp(payload, now)
    if ethertype == _ETH_IPV4:
        return _parse_dhcp_ack(payload, now)
    return None


def _parse_arp(arp: bytes, now: float) -> Learned | None:
    if len(arp) < 28:
        return None
    htype, ptype, hlen, plen = struct.unpack_from("!HHBB", arp)
    if (htype, ptype, hlen, plen) != (1, _ETH_IPV4, 6, 4):
        return None
    sender = ipaddress.IPv4Address(arp[14:18])
    if sender.is_unspecified or sender.is_loopback or sender.is_link_local:
        return None
    return Learned(_mac(arp[8:14]), str(sender), "arp-snoop", now)


def _parse_dhcp_ack(packet: bytes, now: float) -> Learned | None:
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != 17:
        return None
    header = (packet[0] & 0x0F) * 4
    udp = packet[header:]
    if len(udp) < 8 or struct.unpack_from("!HH", udp) != (67, 68):
        return None
    bootp = udp[8:]
    if len(bootp) < 240 or bootp[0] != 2 or bootp[2] != 6 or bootp[236:240] != _DHCP_MAGIC:
        return None
    options = _dhcp_options(bootp[240:])
    if options.get(_OPT_TYPE) != bytes([_DHCPACK]):
        return None
    address = ipaddress.IPv4Address(bootp[16:20])
    if address.is_unspecified:
        return None  # an ACK to a DHCPINFORM: the client had its address already
    lease = options.get(_OPT_LEASE)
    until = now + struct.unpack("!I", lease)[0] if lease and len(lease) == 4 else None
    return Learned(_mac(bootp[28:34]), str(address), "dhcp-snoop", now, until)


def _dhcp_options(data: bytes) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    offset = 0
    while offset < len(data):
        code = data[offset]
        if code == _OPT_END:
            break
        if code == _OPT_PAD:
            offset += 1
            continue
        if offset + 1 >= len(data):
            break
        length = data[offset + 1]
        options.setdefault(code, data[offset + 2 : offset + 2 + length])
        offset += 2 + length
    return options


def _mac(raw: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in raw)


# ----------------------------------------------------------------------------------- listening
class AddressLearner:
    """Listens on a running guest's tap devices for its DHCP ACKs and ARP packets.

    Use :meth:`open`; :meth:`poll` waits up to ``timeout`` seconds and returns what was learned
    (frames queue in the sockets between polls, so a caller's own work loses none)."""

    def __init__(self, macs: set[str], sockets: list[socket.socket]) -> None:
        self.macs = macs
        self.sockets = sockets

    @classmethod
    def open(cls, conn: Connection, dom: libvirt.virDomain) -> AddressLearner:
        """Start listening; raises LookupError (remote daemon, no tap) or OSError (not root)."""
        if daemon_pid(conn) is None:
            raise LookupError("the daemon is not local: its guests' traffic cannot be heard")
        domain = Domain.from_xml(dom.XMLDesc(0))
        taps = {
            (nic.target_dev, nic.mac.lower())
            for nic in domain.devices.interfaces
            if nic.target_dev and nic.mac
        }
        if not taps:
            raise LookupError(f"VM {dom.name()!r} has no NIC with a tap device on this host")

        def open_sockets() -> list[socket.socket]:
            opened: list[socket.socket] = []
            try:
                for tap, _mac in sorted(taps):
                    sock = socket.socket(
                        socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL)
                    )
                    opened.append(sock)
                    _attach_filter(sock)
                    sock.bind((tap, _ETH_P_ALL))
                    sock.setblocking(False)
            except OSError:
                for sock in opened:
                    sock.close()
                raise
            return opened

        # opened in the daemon's namespace, where the taps are; usable from here afterwards
        return cls({mac for _tap, mac in taps}, run_in_daemon_netns(conn, open_sockets))

    def poll(self, timeout: float) -> list[Learned]:
        """What was heard since the last poll, waiting up to ``timeout`` s for something
        (``0``: only what is queued, never blocks)."""
        deadline = time.monotonic() + timeout
        learned: list[Learned] = []
        while not learned:
            left = deadline - time.monotonic()
            if not self.sockets:
                time.sleep(max(left, 0.0))
                break
            ready, _w, _x = select.select(self.sockets, [], [], max(left, 0.0))
            for sock in ready:
                learned.extend(self._drain(sock))
            if left <= 0:
                break
        return learned

    def _drain(self, sock: socket.socket) -> list[Learned]:
        found: list[Learned] = []
        while True:
            try:
                frame = sock.recv(2048)
            except BlockingIOError:
                return found
            except OSError:
                # the tap went away (the guest stopped or the NIC was unplugged): stop
                # listening there, keep the others
                self.sockets.remove(sock)
                sock.close()
                return found
            fact = parse_frame(frame)
            if fact is not None and fact.mac in self.macs:
                found.append(fact)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def __enter__(self) -> AddressLearner:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()


def _attach_filter(sock: socket.socket) -> None:
    program = (ctypes.c_ubyte * (8 * len(_FILTER)))()
    for index, (code, jt, jf, k) in enumerate(_FILTER):
        struct.pack_into("=HBBI", program, 8 * index, code, jt, jf, k)
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (native padding);
    # ``program`` must outlive the call only: the kernel copies the filter
    fprog = struct.pack("HP", len(_FILTER), ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


# ----------------------------------------------------------------------------------- keeping
def remembered(domain: Domain, now: float | None = None) -> list[Learned]:
    """What an earlier command learned, from the live domain's metadata (leases not ended)."""
    now = time.time() if now is None else now
    found = []
    for node in domain.element.iterfind(
        f"./metadata/{{{LEARNED_NS}}}learned/{{{LEARNED_NS}}}address"
    ):
        with contextlib.suppress(KeyError, ValueError):
            until = float(node.attrib["until"]) if "until" in node.attrib else None
            if until is not None and until < now:
                continue  # the lease ended: the guest may have another address by now
            found.append(
                Learned(
                    str(node.attrib["mac"]).lower(),
                    str(ipaddress.ip_address(node.attrib["ip"])),
                    str(node.attrib["source"]),
                    float(node.attrib["seen"]),
                    until,
                )
            )
    return found


def remember(dom: libvirt.virDomain, learned: list[Learned]) -> bool:
    """Keep ``learned`` (the newest fact per MAC wins) in the running domain's live metadata.

    Returns False when libvirt refused (a read-only connection): the address is still reported,
    only not kept."""
    try:
        domain = Domain.from_xml(dom.XMLDesc(0))
    except libvirt.libvirtError:
        return False
    newest: dict[str, Learned] = {fact.mac: fact for fact in remembered(domain)}
    for fact in sorted(learned, key=lambda item: item.seen):
        known = newest.get(fact.mac)
        if known and known.ip == fact.ip and known.until is not None and fact.until is None:
            continue  # ARP confirming a DHCP lease: keep the lease's source and its end
        newest[fact.mac] = fact
    root = etree.Element("learned")
    for fact in sorted(newest.values(), key=lambda item: item.mac):
        node = etree.SubElement(root, "address", mac=fact.mac, ip=fact.ip, source=fact.source)
        node.set("seen", f"{fact.seen:.0f}")
        if fact.until is not None:
            node.set("until", f"{fact.until:.0f}")
    try:
        dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            etree.tostring(root, encoding="unicode"),
            LEARNED_PREFIX,
            LEARNED_NS,
            libvirt.VIR_DOMAIN_AFFECT_LIVE,
        )
    except libvirt.libvirtError:
        return False
    return True


__all__ = ["AddressLearner", "Learned", "parse_frame", "remember", "remembered"]
