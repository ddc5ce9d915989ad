"""Per-VM locks: one snapshot, clone, delete or live change of a VM at a time, across processes.

A lock is ``fcntl.flock`` on ``/run/kvmgr/locks/<uuid>.lock`` (``~/.cache/kvmgr/locks`` when
not root).  flock is released by the kernel when the holder exits, so a crashed kvmgr never
leaves a VM locked.  The holder writes its operation into the file, so whoever is refused learns
what is going on ("VM is busy: snapshot create").

Inside one process the lock is re-entrant for the thread holding it: a clone that takes a
snapshot of its source must not dead-lock on the lock it already holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import Busy, libvirt_errors

P = ParamSpec("P")
R = TypeVar("R")

#: How often a waiting caller retries a held lock.
_POLL_SECONDS = 0.1
LOCK_DIR_ENV = "KVMGR_LOCK_DIR"


def lock_dir() -> Path:
    """Where lock files live: ``$KVMGR_LOCK_DIR``, /run/kvmgr/locks as root, else the cache."""
    forced = os.environ.get(LOCK_DIR_ENV)
    if forced:
        return Path(forced)
    if os.geteuid() == 0:
        return Path("/run/kvmgr/locks")
    return Path.home() / ".cache" / "kvmgr" / "locks"


@dataclass
class _Held:
    fd: int
    thread: int
    depth: int


# Locks this process holds, by lock file path (flock is per open file, so a second open in the
# same process would conflict with the first: re-entry is counted here instead).
_held: dict[Path, _Held] = {}
_held_guard = threading.Lock()


def read_holder(path: Path) -> str:
    """The operation written into a lock file by its holder ("unknown" when unreadable)."""
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def file_lock(
    path: Path, operation: str, *, wait: bool = False, timeout: float | None = None, what: str
) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` for the block; ``what`` names the object in errors.

    Without ``wait`` a held lock raises :class:`Busy` at once; with it, the call waits (for at
    most ``timeout`` seconds when given).
    """
    if _reenter(path):
        try:
            yield
        finally:
            _leave(path)
        return
    fd = _acquire(path, operation, wait=wait, timeout=timeout, what=what)
    with _held_guard:
        _held[path] = _Held(fd, threading.get_ident(), 1)
    try:
        yield
    finally:
        _leave(path)


def _reenter(path: Path) -> bool:
    with _held_guard:
        held = _held.get(path)
        if held is not None and held.thread == threading.get_ident():
            held.depth += 1
            return True
    return False


def _leave(path: Path) -> None:
    with _held_guard:
        held = _held[path]
        held.depth -= 1
        if held.depth:
            return
        del _held[path]
    # Empty the file before unlocking so a later reader never sees a stale operation.
    with contextlib.suppress(OSError):
        os.ftruncate(held.fd, 0)
    fcntl.flock(held.fd, fcntl.LOCK_UN)
    os.close(held.fd)


def _acquire(path: Path, operation: str, *, wait: bool, timeout: float | None, what: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                holder = read_holder(path)
                os.close(fd)
                raise Busy(
                    f"{what} is busy: {holder}",
                    hint="wait until that operation ends and try again",
                ) from None
            time.sleep(_POLL_SECONDS)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{operation} (pid {os.getpid()})\n".encode(), 0)
    return fd


def vm_lock_path(uuid: str) -> Path:
    return lock_dir() / f"{uuid}.lock"


@contextlib.contextmanager
def vm_lock(
    conn: Connection,
    name: str,
    operation: str,
    *,
    wait: bool = False,
    timeout: float | None = None,
) -> Iterator[libvirt.virDomain]:
    """Serialise ``operation`` with every other locked operation on VM ``name``.

    Keyed by the VM's UUID, so a rename cannot dodge the lock and two hosts' VMs of the same
    name never share one.  Raises ``Busy("VM is busy: <their operation>")`` unless ``wait``.
    Yields the locked domain, so the caller need not look it up again.
    """
    from kvmgr.services.vms import lookup

    dom = lookup(conn, name)
    with libvirt_errors(f"reading the UUID of VM {name}"):
        uuid = dom.UUIDString()
    with file_lock(vm_lock_path(uuid), operation, wait=wait, timeout=timeout, what="VM"):
        yield dom


VMChange = Callable[Concatenate[Connection, str, P], R]


def locked(operation: str) -> Callable[[VMChange[P, R]], VMChange[P, R]]:
    """Decorator for a service function ``f(conn, name, ...)`` that changes VM ``name``.

    The change runs under :func:`vm_lock`, so a live change never interleaves with a snapshot,
    clone or delete of the same VM (it fails with ``Busy`` naming what holds the VM).
    """

    def decorate(func: VMChange[P, R]) -> VMChange[P, R]:
        @functools.wraps(func)
        def wrapper(conn: Connection, name: str, /, *args: P.args, **kwargs: P.kwargs) -> R:
            with vm_lock(conn, name, operation):
                result: R = func(conn, name, *args, **kwargs)
            return result

        return wrapper

    return decorate
