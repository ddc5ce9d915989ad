"""Live events for the UI: libvirt lifecycle events (also from changes made outside kvmgr) and task
updates, fanned out to every subscribed client; and the VMs' and the host's CPU, memory, disk and
network, sampled once per interval for all clients and the charts' history
(:class:`StatsPublisher`).

Task updates (and lifecycle events written by the workers that own each host's event connection)
come from the database's events table (:class:`DatabaseEvents`), so every API replica streams
what every worker did.  Each client gets only what it may see (kvmgr.control.events).

Lifecycle events come from the worker that watches each host (kvmgr.control.host_events), through
the events table; :class:`EventBus` hops them onto the asyncio loop of each subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from kvmgr.api.stats_history import HOST_SERIES, StatsHistory
from kvmgr.connect import Connection
from kvmgr.control import events as events_store
from kvmgr.control import notify
from kvmgr.control.ownership import LOCAL_HOST, owners_of_kind
from kvmgr.errors import KvmgrError
from kvmgr.services import stats
from kvmgr.services.stats import StatsSample
from kvmgr.store.db import Store

log = logging.getLogger(__name__)

_QUEUE_SIZE = 256


class EventBus:
    """Thread-safe publish; each subscriber reads from its own bounded asyncio queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = (
            set()
        )

    def publish(self, event: dict[str, Any]) -> None:
        event = {"at": time.time(), **event}
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            with contextlib.suppress(RuntimeError):  # that client's loop is gone
                loop.call_soon_threadsafe(_offer, queue, event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        entry = (asyncio.get_running_loop(), asyncio.Queue[dict[str, Any]](_QUEUE_SIZE))
        with self._lock:
            self._subscribers.add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                self._subscribers.discard(entry)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)


def _offer(queue: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
    # A client too slow to read loses old events, never blocks the others.
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(event)


class DatabaseEvents:
    """Publishes on ``bus`` the rows other processes (and this one) add to the events table.

    It also keeps the VM owner rows fresh, which the event stream's visibility rule reads for
    every event without a query of its own.
    """

    #: Seconds between reads while the PostgreSQL listener is connected (each write to the
    #: events table notifies it); the owner rows are refreshed at least this often too.
    LISTENING_INTERVAL = 2.0

    def __init__(self, store: Store, bus: EventBus, interval: float = 0.25) -> None:
        self._store = store
        self._bus = bus
        self.interval = interval
        self._wake = threading.Event()
        #: PostgreSQL only: SQLite cannot notify another process, so there the feed polls.
        self.listener: notify.Listener | None = None
        self.owners: events_store.VMOwners = {}
        self._hosts = {LOCAL_HOST}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._store.session() as session:
            cursor = events_store.Cursor.at_newest(session)
        self._refresh_owners()
        self._stop.clear()
        self.listener = notify.start_listener(self._store, notify.EVENTS, self._wake.set)
        self._thread = threading.Thread(
            target=self._run, args=(cursor,), name="kvmgr-event-feed", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        if self._thread is not None:
            self._thread.join(self.interval + 5)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, cursor: events_store.Cursor) -> None:
        refreshed = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(notify.idle_wait(self.listener, self.interval, self.LISTENING_INTERVAL))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                with self._store.session() as session:
                    fresh = cursor.read(session)
                self._hosts.update(str(event["host"]) for event in fresh if event.get("host"))
                if fresh or time.monotonic() - refreshed > 2:
                    self._refresh_owners()
                    refreshed = time.monotonic()
            except Exception:  # a database blip: the next round reads from the same cursor
                log.exception("reading the events table failed")
                continue
            for event in fresh:
                self._bus.publish(event)

    def _refresh_owners(self) -> None:
        self.owners = {host: owners_of_kind(self._store, "vm", host=host) for host in self._hosts}


class StatsPublisher:
    """CPU, memory, disk and network of every VM and of the host: one bulk libvirt stats call
    (and the host's CPU and memory: two calls more) per interval while ``kvmgr serve`` runs,
    whatever the number of VMs or open dashboards.  Each sample goes into the replica's history
    (kvmgr.api.stats_history, the charts' last hour) and, while someone listens, to every
    subscriber as one ``stats`` event.

    Each event carries the rates between this sample and the previous one (none for a VM's first
    sample), the host's (``host``), the wall-clock time ``t`` and a sequence number, so clients
    see the same sample, never their own.
    """

    def __init__(
        self,
        conn: Callable[[], Connection],
        bus: EventBus,
        interval: float,
        history: StatsHistory,
        host_name: Callable[[], str],
    ) -> None:
        self._conn = conn
        self._bus = bus
        self.interval = interval
        self.history = history
        self._host_name = host_name
        self.samples = 0  # bulk calls made: read by tests and useful when debugging load
        self.last_seconds = 0.0  # what the newest sample cost (libvirt calls and history)
        self.busy_seconds = 0.0  # and all of them together
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kvmgr-stats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
            self._thread = None

    def _run(self) -> None:
        previous: tuple[StatsSample, stats.HostCounters] | None = None
        while not self._stop.wait(self.interval):
            started = time.perf_counter()
            try:
                host = self._host_name()
                conn = self._conn()
                sample = stats.collect(conn)
                counters = stats.host_counters(conn)
            except KvmgrError as err:
                log.warning("VM statistics unavailable: %s", err)
                previous = None
                continue
            except Exception:  # a database blip naming the host: the next round tries again
                log.exception("sampling VM statistics failed")
                previous = None
                continue
            before = previous[0] if previous else StatsSample(sample.taken_at - self.interval)
            vm_rates = stats.rates(before, sample)
            host_rates = stats.host_rates(previous[1] if previous else None, counters, vm_rates)
            previous = (sample, counters)
            rows = [row.as_dict() for row in vm_rates]
            at = time.time()
            self.history.host(host).add(
                at, {HOST_SERIES: host_rates.as_dict(), **{row["name"]: row for row in rows}}
            )
            self.samples += 1
            if self._bus.subscriber_count:
                self._bus.publish(
                    {
                        "type": "stats",
                        "seq": self.samples,
                        "interval": self.interval,
                        "t": at,
                        "host_name": host,
                        "host": host_rates.as_dict(),
                        "vms": rows,
                    }
                )
            self.last_seconds = time.perf_counter() - started
            self.busy_seconds += self.last_seconds
