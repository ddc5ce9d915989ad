"""A single ICMP echo, as a program: ``python -m kvmgr.host.reach ADDRESS [TIMEOUT]``.

The bridge check needs "does the gateway still answer?" from inside a network namespace, and
Debian's minimal images ship no ``ping``.  Run under ``ip netns exec``, this module sends one echo
request per half second until a reply arrives or the timeout passes.  Exit status 0 on a reply.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from ipaddress import IPv6Address, ip_address

_ECHO_REQUEST = {4: 8, 6: 128}
_ECHO_REPLY = {4: 0, 6: 129}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _open(version: int) -> socket.socket:
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if version == 6 else socket.IPPROTO_ICMP
    return socket.socket(family, socket.SOCK_RAW, proto)


def echo(address: str, timeout: float) -> bool:
    """True when ``address`` sends an echo reply within ``timeout`` seconds."""
    version = 6 if isinstance(ip_address(address), IPv6Address) else 4
    ident = os.getpid() & 0xFFFF
    deadline = time.monotonic() + timeout
    with _open(version) as sock:
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            header = struct.pack("!BBHHH", _ECHO_REQUEST[version], 0, 0, ident, seq)
            payload = b"kvmgr"
            checksum = 0 if version == 6 else _checksum(header + payload)  # the kernel sums v6
            packet = struct.pack("!BBHHH", _ECHO_REQUEST[version], 0, checksum, ident, seq)
            sock.sendto(packet + payload, (address, 0))
            if _await_reply(sock, version, ident, min(0.5, deadline - time.monotonic())):
                return True
    return False


def _await_reply(sock: socket.socket, version: int, ident: int, wait: float) -> bool:
    end = time.monotonic() + max(wait, 0.0)
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(2048)
        except TimeoutError:
            return False
        icmp = data[(data[0] & 0x0F) * 4 :] if version == 4 else data  # v4 raw includes IP header
        if len(icmp) >= 8:
            kind, _code, _sum, reply_id, _seq = struct.unpack("!BBHHH", icmp[:8])
            if kind == _ECHO_REPLY[version] and reply_id == ident:
                return True
    return False


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m kvmgr.host.reach ADDRESS [TIMEOUT]", file=sys.stderr)
        return 2
    timeout = float(argv[1]) if len(argv) > 1 else 3.0
    try:
        return 0 if echo(argv[0], timeout) else 1
    except OSError as err:
        print(f"cannot ping {argv[0]}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
