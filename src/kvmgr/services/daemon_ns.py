"""The network namespace the local libvirt daemon runs in.

libvirtd (or virtnetworkd) may run in a network namespace of its own (this project's host setup
puts it in netns ``kvmgr``): its bridges, routes and neighbour tables are that namespace's, not
the ones kvmgr's own process sees.  For a local daemon they are read through ``/proc/PID/net``
or by entering the namespace (``setns`` on a short-lived thread, so kvmgr's other threads stay
where they are).  A remote daemon's namespace cannot be reached: callers get None and fall back
to what libvirt's own API tells.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kvmgr.connect import Connection
from kvmgr.connect.uri import is_local

_DAEMON_PID_FILES = ("/run/libvirtd.pid", "/run/libvirt/virtnetworkd.pid", "/run/virtnetworkd.pid")
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def daemon_pid(conn: Connection) -> int | None:
    """The pid of the local daemon that runs libvirt's networks; None for a remote daemon."""
    if not is_local(conn.uri) or conn.is_test_driver:
        return None
    return local_daemon_pid()


def local_daemon_pid() -> int | None:
    """The pid of this host's libvirt daemon (monolithic or virtnetworkd), from its pid file."""
    for pid_file in _DAEMON_PID_FILES:
        try:
            pid = int(Path(pid_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{pid}/ns/net").exists():
            return pid
    return None


def daemon_proc_net(conn: Connection, table: str) -> Path | None:
    """A /proc/net table (``route``, ``arp``, ``dev``) as the *daemon* sees it:
    ``/proc/PID/net/TABLE`` shows the daemon's network namespace.  None for a remote daemon
    (or the test driver); our own table when no daemon pid file is found."""
    if not is_local(conn.uri) or conn.is_test_driver:
        return None
    pid = daemon_pid(conn)
    path = Path(f"/proc/{pid}/net/{table}") if pid else Path(f"/proc/net/{table}")
    return path if path.exists() else None


def daemon_interfaces(conn: Connection) -> list[str] | None:
    """Interface names in the daemon's namespace (from its ``/proc/PID/net/dev``)."""
    table = daemon_proc_net(conn, "dev")
    if table is None:
        return None
    names = []
    for line in table.read_text().splitlines()[2:]:
        name, sep, _counters = line.partition(":")
        if sep:
            names.append(name.strip())
    return names


def netns_name(pid: int, netns_dir: Path = Path("/run/netns")) -> str | None:
    """The name (``ip netns``) of the network namespace process ``pid`` runs in; None for the
    host's own namespace or one without a name."""
    try:
        target = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    with contextlib.suppress(OSError):
        for entry in sorted(netns_dir.iterdir()):
            with contextlib.suppress(OSError):
                st = entry.stat()
                if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                    return entry.name
    return None


def run_in_daemon_netns(conn: Connection, work: Callable[[], T]) -> T:
    """Run ``work`` inside the local daemon's network namespace and return its result.

    Sockets opened there stay bound to that namespace after the thread ends, so a caller may
    open a socket with ``work`` and use it from any thread.  Needs CAP_SYS_ADMIN (root); raises
    OSError otherwise, and LookupError when there is no local daemon to enter.
    """
    pid = daemon_pid(conn)
    if pid is None:
        raise LookupError("no local libvirt daemon whose namespace could be entered")
    target = os.readlink(f"/proc/{pid}/ns/net")
    if target == os.readlink("/proc/self/ns/net"):
        return work()  # same namespace: no thread, no privilege needed
    result: list[T] = []
    failure: list[BaseException] = []

    def enter_and_work() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if _setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(
                        err, f"setns into the daemon's network namespace: {os.strerror(err)}"
                    )
            finally:
                os.close(fd)
            result.append(work())
        except BaseException as err:  # handed to the calling thread
            failure.append(err)

    # A thread of its own: setns changes only the calling thread, which then ends, so no other
    # code of kvmgr ever runs in the daemon's namespace by accident.
    thread = threading.Thread(target=enter_and_work, name="kvmgr-daemon-netns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


# ------------------------------------------------------------------ neighbour table (netlink)
_RTM_NEWNEIGH, _RTM_GETNEIGH = 28, 30
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x01, 0x300
_NDA_DST, _NDA_LLADDR = 1, 2
#: NUD states of an entry whose link-layer address is known (REACHABLE, STALE, DELAY, PROBE,
#: PERMANENT); INCOMPLETE and FAILED entries have none worth reporting
_NUD_KNOWN = 0x02 | 0x04 | 0x08 | 0x10 | 0x80
_NLMSG_HDR = struct.Struct("=LHHLL")
_NDMSG = struct.Struct("=BBHiHBB")
_RTATTR = struct.Struct("=HH")


def parse_neighbour_messages(data: bytes) -> tuple[list[tuple[str, str, int]], bool]:
    """Netlink RTM_NEWNEIGH messages -> ([(mac, ip, ifindex)], dump finished).

    Entries without a known link-layer address (incomplete, failed) are left out."""
    entries: list[tuple[str, str, int]] = []
    offset = 0
    while offset + _NLMSG_HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, offset)
        if length < _NLMSG_HDR.size:
            break  # malformed: stop rather than loop
        if kind == _NLMSG_DONE:
            return entries, True
        if kind == _NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + _NLMSG_HDR.size)
            raise OSError(-code, f"netlink neighbour dump: {os.strerror(-code)}")
        if kind == _RTM_NEWNEIGH:
            entry = _neighbour(data[offset + _NLMSG_HDR.size : offset + length])
            if entry is not None:
                entries.append(entry)
        offset += (length + 3) & ~3
    return entries, False


def _neighbour(body: bytes) -> tuple[str, str, int] | None:
    if len(body) < _NDMSG.size:
        return None
    _family, _p1, _p2, ifindex, state, _flags, _type = _NDMSG.unpack_from(body)
    if not state & _NUD_KNOWN:
        return None
    dst = lladdr = None
    offset = _NDMSG.size
    while offset + _RTATTR.size <= len(body):
        length, kind = _RTATTR.unpack_from(body, offset)
        if length < _RTATTR.size:
            break
        value = body[offset + _RTATTR.size : offset + length]
        if kind == _NDA_DST and len(value) in (4, 16):
            dst = str(ipaddress.ip_address(value))
        elif kind == _NDA_LLADDR and len(value) == 6:
            lladdr = ":".join(f"{byte:02x}" for byte in value)
        offset += (length + 3) & ~3
    if dst is None or lladdr is None:
        return None
    return lladdr, dst, ifindex


def dump_neighbours() -> list[tuple[str, str, int]]:
    """The neighbour table (IPv4 ARP and IPv6 NDP) of the calling thread's namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(2.0)
        request = _NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0)
        header = _NLMSG_HDR.pack(
            _NLMSG_HDR.size + len(request), _RTM_GETNEIGH, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
        )
        sock.send(header + request)
        entries: list[tuple[str, str, int]] = []
        while True:
            found, done = parse_neighbour_messages(sock.recv(65536))
            entries.extend(found)
            if done:
                return entries


def _setns(fd: int, nstype: int) -> int:
    return int(_libc().setns(fd, nstype))


@functools.cache
def _libc() -> ctypes.CDLL:
    # loaded once: find_library runs ldconfig, milliseconds per call
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


__all__ = [
    "daemon_interfaces",
    "daemon_pid",
    "daemon_proc_net",
    "dump_neighbours",
    "local_daemon_pid",
    "netns_name",
    "parse_neighbour_messages",
    "run_in_daemon_netns",
]
