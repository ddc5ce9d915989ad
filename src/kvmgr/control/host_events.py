"""Per-host event connections: one worker owns each host's libvirt event subscription.

Every worker runs a :class:`HostEventOwners`; for each registered host it tries to take the lease
``host-events:<host>`` (kvmgr.control.leases: one holder in the whole fleet, renewed while
alive, taken over when the holder dies).  The holder keeps a read-only connection to the host
with libvirt keepalive on, subscribes to domain lifecycle events and writes each into the events
table (kvmgr.control.events), which every API replica streams.  When the connection drops (the
daemon restarted, the network went away) it reconnects with backoff and subscribes again, and
writes a ``host`` event saying the host's events are live again.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import libvirt

from kvmgr.connect import Connection, open_connection
from kvmgr.control import events
from kvmgr.control.plane import ControlPlane
from kvmgr.errors import Busy, KvmgrError, libvirt_errors
from kvmgr.store.db import Store

log = logging.getLogger(__name__)

# libvirt's lifecycle event kinds by name (constants, never numbers).
LIFECYCLE_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
#: libvirt keepalive: a probe every 5 s, the connection declared dead after 3 unanswered.
KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 3
#: Reconnection backoff, seconds: doubles from the first to the last.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 15.0
#: How often a worker looks for hosts it does not watch (new hosts, leases of dead owners).
RESCAN_SECONDS = 10.0


def lease_key(host: str) -> str:
    return f"host-events:{host}"


class HostEvents:
    """Watches one host while this process holds its lease; stops when told to."""

    def __init__(self, store: Store, plane: ControlPlane, host: str, uri: str) -> None:
        self.store = store
        self.plane = plane
        self.host = host
        self.uri = uri
        self.connected = threading.Event()  # a subscription is live (read by tests)
        self.connections = 0  # subscriptions made so far (reconnections + 1)
        self._stop = threading.Event()
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=10_000)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"kvmgr-host-events-{self.host}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        """Own the host's lease (or give up at once: another worker watches it), then watch."""
        try:
            with self.plane.lease(lease_key(self.host), "watching lifecycle events"):
                log.info("watching events of host %s (%s)", self.host, self.uri)
                self._watch()
        except Busy:
            return  # another worker owns this host's events; the next rescan tries again
        except Exception:  # the rescan starts a new watcher; never a dead thread silently
            log.exception("event watcher of host %s failed", self.host)

    def _watch(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                conn = self._subscribe()
            except KvmgrError as err:
                log.warning("events of host %s: %s; retrying in %.1f s", self.host, err, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            try:
                self._pump(conn)
            finally:
                self.connected.clear()
                conn.close()

    def _subscribe(self) -> Connection:
        conn = open_connection(self.uri, readonly=True)  # registers the event loop first
        try:
            # A driver without a remote link (test:///) has nothing to keep alive, and says so.
            with contextlib.suppress(libvirt.libvirtError):
                conn.virconn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            with libvirt_errors(f"subscribing to lifecycle events of host {self.host}"):
                conn.virconn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
                )
        except KvmgrError:
            conn.close()
            raise
        self.connections += 1
        self.connected.set()
        self._write({"type": "host", "event": "connected", "connections": self.connections})
        return conn

    def _pump(self, conn: Connection) -> None:
        """Write queued events until the connection dies or we are stopped."""
        while not self._stop.is_set():
            try:
                event = self._queue.get(timeout=1.0)
            except queue.Empty:
                if not _alive(conn):
                    log.warning("events of host %s: connection lost; reconnecting", self.host)
                    return
                continue
            self._write(event)

    def _write(self, event: dict[str, Any]) -> None:
        try:
            with self.store.session() as session:
                if event["type"] == "vm":
                    events.record_vm(session, self.host, str(event["uuid"]), event)
                else:
                    events.record_host(session, self.host, event)
        except Exception:  # the database is back soon; an event lost is better than a watcher
            log.exception("cannot write an event of host %s", self.host)

    def _on_lifecycle(
        self,
        _conn: libvirt.virConnect,
        dom: libvirt.virDomain,
        event: int,
        detail: int,
        _opaque: object,
    ) -> None:
        # libvirt's event loop thread: no database work here, only a hand-over.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(
                {
                    "type": "vm",
                    "event": LIFECYCLE_NAMES.get(event, "unknown"),
                    "detail": detail,
                    "name": dom.name(),
                    "uuid": dom.UUIDString(),
                }
            )


class HostEventOwners:
    """Keeps a :class:`HostEvents` running for every registered host whose lease it can take."""

    def __init__(
        self,
        store: Store,
        plane: ControlPlane,
        hosts: Callable[[], dict[str, str]],
        rescan: float = RESCAN_SECONDS,
    ) -> None:
        self.store = store
        self.plane = plane
        self._hosts = hosts  # name -> URI of every registered host
        self.rescan = rescan
        self.watchers: dict[str, HostEvents] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kvmgr-host-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for watcher in self.watchers.values():
            watcher.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan()
            except Exception:  # the registry is read again at the next rescan
                log.exception("cannot read the host registry for event watchers")
            self._stop.wait(self.rescan)

    def scan(self) -> None:
        for host, uri in self._hosts().items():
            watcher = self.watchers.get(host)
            if watcher is not None and watcher.alive and watcher.uri == uri:
                continue
            if watcher is not None:
                watcher.stop()
            watcher = HostEvents(self.store, self.plane, host, uri)
            self.watchers[host] = watcher
            watcher.start()


def _alive(conn: Connection) -> bool:
    try:
        return bool(conn.virconn.isAlive())
    except libvirt.libvirtError:
        return False
