"""The network namespace the local libvirt daemon runs in.

libvirtd (or virtnetworkd) may run in a network namespace of its own (this project's host setup
puts it in netns ``kvmgr``): its bridges, routes and neighbour tables are that namespace's, not
the ones kvmgr's own process sees.  For a local daemon they are read through ``/proc/PID/net``
or by entering the namespace (``setns`` on a short-lived thread, so kvmgr's other threads stay
where they are).  A remote daemon's namespace cannot be reached: callers get None and fall back
to what libvirt's own API tells.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
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


def _setns(fd: int, nstype: int) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return int(libc.setns(fd, nstype))


__all__ = ["daemon_interfaces", "daemon_pid", "daemon_proc_net", "run_in_daemon_netns"]
