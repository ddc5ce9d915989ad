"""Calls that must not hang on a dead host: a bounded connect with keepalive, and a fan-out that
queries many hosts in parallel, each within its own time bound.

libvirt's ``open`` has no timeout of its own: a host that drops packets, or a port that accepts
and then says nothing, blocks it for minutes.  So the call runs in a *daemon* thread and the
caller stops waiting at the bound.  A daemon thread, not a ``ThreadPoolExecutor``: the
interpreter joins an executor's threads at exit, so one hung ``open`` would still hold the
command up.  The abandoned thread ends when libvirt gives up (or with the process).

Once open, libvirt's keepalive (``setKeepAlive``) closes a connection whose peer stops answering
within ``interval * (count + 1)`` seconds, so later calls fail instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import libvirt

from kvmgr.connect.connection import Connection, open_connection
from kvmgr.errors import ConnectionFailed, InvalidInput, KvmgrError

T = TypeVar("T")
K = TypeVar("K")

TIMEOUT_ENV = "KVMGR_HOST_TIMEOUT"
#: Seconds a host gets to open a connection, or to answer one query (``host list``, ``vm list
#: --all-hosts``).  ssh's own connection set-up over a slow link fits well within it.
DEFAULT_TIMEOUT = 8.0
#: libvirt keepalive: a probe every 3 s, the connection closed after 2 unanswered (about 9 s).
KEEPALIVE_INTERVAL = 3
KEEPALIVE_COUNT = 2


def host_timeout() -> float:
    """The per-host bound: ``$KVMGR_HOST_TIMEOUT`` seconds, else :data:`DEFAULT_TIMEOUT`."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 600:
        raise InvalidInput(
            f"{TIMEOUT_ENV}={text!r} is not a number of seconds", hint="use e.g. 8 or 2.5 (<= 600)"
        )
    return value


class TimedOut(ConnectionFailed):
    """A host did not answer within the bound."""


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one bounded call gave: a value, or the error (a :class:`KvmgrError`) and how long."""

    value: T | None
    error: KvmgrError | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


def _run(func: Callable[[], T]) -> tuple[T | None, KvmgrError | None]:
    try:
        return func(), None
    except KvmgrError as err:
        return None, err
    except libvirt.libvirtError as err:  # a service that let one through: still a host failure
        return None, ConnectionFailed(str(err.get_error_message()))


def call_bounded(func: Callable[[], T], timeout: float, what: str) -> T:
    """``func()`` in a daemon thread; :class:`TimedOut` when it has not returned in ``timeout``."""
    box: queue.SimpleQueue[tuple[T | None, KvmgrError | None]] = queue.SimpleQueue()
    threading.Thread(target=lambda: box.put(_run(func)), daemon=True, name=what).start()
    try:
        value, error = box.get(timeout=timeout)
    except queue.Empty:
        raise TimedOut(
            f"{what}: no answer within {timeout:g} s",
            hint=f"is the host up and its libvirtd reachable? ({TIMEOUT_ENV} sets the bound)",
        ) from None
    if error is not None:
        raise error
    return value  # type: ignore[return-value]  # None only when func returns None


class _Attempt:
    """One ``open`` of a URI in flight, shared by everyone who wants that URI meanwhile."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.conn: Connection | None = None
        self.error: KvmgrError | None = None


_attempts: dict[str, _Attempt] = {}
_attempts_lock = threading.Lock()


def _open_into(uri: str, attempt: _Attempt) -> None:
    attempt.conn, attempt.error = _run(lambda: open_connection(uri))
    attempt.done.set()


def open_bounded(uri: str, timeout: float) -> Connection:
    """Open ``uri`` within ``timeout`` seconds and turn libvirt's keepalive on.

    While an open of ``uri`` is in flight (a hung host), later callers wait for that same open
    rather than start another: a dashboard polling a dead host holds one thread, not one more
    per request.
    """
    with _attempts_lock:
        attempt = _attempts.get(uri)
        if attempt is None or (attempt.done.is_set() and attempt.conn is None):
            attempt = _Attempt()  # none, or a failed one: try again
            _attempts[uri] = attempt
            threading.Thread(
                target=_open_into, args=(uri, attempt), daemon=True, name=f"open {uri}"
            ).start()
    if not attempt.done.wait(timeout):
        raise TimedOut(
            f"connecting to {uri}: no answer within {timeout:g} s",
            hint=f"is the host up and its libvirtd reachable? ({TIMEOUT_ENV} sets the bound)",
        )
    with _attempts_lock:
        if _attempts.get(uri) is attempt:
            del _attempts[uri]
    if attempt.error is not None:
        raise attempt.error
    conn = attempt.conn
    assert conn is not None  # done, and no error
    # drivers without a remote protocol (test:///, local embedded) have no keepalive
    with contextlib.suppress(libvirt.libvirtError):
        conn.virconn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
    return conn


# ------------------------------------------------------------------------------------ cache
_connections: dict[str, Connection] = {}
_connections_lock = threading.Lock()


def connect_uri(uri: str, timeout: float | None = None) -> Connection:
    """The process's connection to ``uri``: opened within the bound with keepalive on, reused
    while alive, reopened when its daemon went away (libvirt's calls are thread-safe)."""
    with _connections_lock:
        cached = _connections.get(uri)
    if cached is not None:
        try:
            if cached.virconn.isAlive():
                return cached
        except libvirt.libvirtError:
            pass
        cached.close()
    conn = open_bounded(uri, host_timeout() if timeout is None else timeout)
    with _connections_lock:
        _connections[uri] = conn
    return conn


def forget_connection(uri: str) -> None:
    """Close and drop the cached connection to ``uri`` (a host removed from the registry)."""
    with _connections_lock:
        conn = _connections.pop(uri, None)
    if conn is not None:
        conn.close()


def close_connections() -> None:
    """Close every cached connection (end of a CLI command, API shutdown)."""
    with _connections_lock:
        conns = list(_connections.values())
        _connections.clear()
    for conn in conns:
        conn.close()


def fan_out(
    items: Iterable[K], func: Callable[[K], T], timeout: float, *, workers: int = 32
) -> list[Outcome[T]]:
    """``func(item)`` for every item in parallel, at most ``workers`` at once, each bounded by
    ``timeout`` from the moment it starts; the outcomes in the items' order.  A hung item never
    delays the others: the answer comes as soon as each has answered or run out of time."""
    todo = list(items)
    results: queue.SimpleQueue[tuple[int, T | None, KvmgrError | None, float]] = queue.SimpleQueue()
    slots = threading.BoundedSemaphore(max(1, workers))
    started: dict[int, float] = {}
    freed: set[int] = set()  # items whose slot was given back (by the item, or at its timeout)
    started_lock = threading.Lock()

    def free(index: int) -> None:
        if index not in freed:
            freed.add(index)
            slots.release()

    def work(index: int) -> None:
        slots.acquire()
        began = time.monotonic()
        with started_lock:
            started[index] = began
        try:
            value, error = _run(lambda: func(todo[index]))
        finally:
            with started_lock:
                free(index)
        results.put((index, value, error, time.monotonic() - began))

    for index in range(len(todo)):
        threading.Thread(target=work, args=(index,), daemon=True, name="kvmgr-host").start()
    outcomes: dict[int, Outcome[T]] = {}
    while len(outcomes) < len(todo):
        now = time.monotonic()
        with started_lock:
            for index, began in started.items():
                if index not in outcomes and now - began >= timeout:
                    outcomes[index] = Outcome(None, _timed_out(timeout), now - began)
                    free(index)  # a hung item's slot goes to the next one waiting
            pending = [started[i] for i in started if i not in outcomes]
        if len(outcomes) == len(todo):
            break
        wait = min((began + timeout - now for began in pending), default=timeout)
        try:
            index, value, error, seconds = results.get(timeout=max(0.01, wait))
        except queue.Empty:
            continue
        if index not in outcomes:
            outcomes[index] = Outcome(value, error, seconds)
    return [outcomes[index] for index in range(len(todo))]


def _timed_out(timeout: float) -> TimedOut:
    return TimedOut(
        f"no answer within {timeout:g} s",
        hint=f"is the host up and its libvirtd reachable? ({TIMEOUT_ENV} sets the bound)",
    )


__all__ = [
    "DEFAULT_TIMEOUT",
    "Outcome",
    "TimedOut",
    "call_bounded",
    "close_connections",
    "connect_uri",
    "fan_out",
    "forget_connection",
    "host_timeout",
    "open_bounded",
]
