"""Wake-ups across processes on PostgreSQL: ``NOTIFY`` when a task is queued (``LISTEN`` in
every worker) and when an event row is written (``LISTEN`` in every API replica's event feed).

Without it a worker of another process sees a new task only at its next poll of the tasks table,
so the poll had to be short (every idle worker querying twice a second) and a task still waited
up to that long.  On PostgreSQL :func:`notify` adds ``pg_notify`` to the transaction that queues
the task; the server delivers it on commit (never for a rolled-back task, never before the row is
visible), and each :class:`Listener` calls its worker's ``wake()``.

SQLite has no notification between processes (no server to deliver one), so there
:func:`notify` does nothing, :func:`listens` is False and the workers keep polling.

The poll stays as the fallback on PostgreSQL too (a notify is lost while a listener reconnects;
a task queued by a kvmgr without this module notifies nobody); it is only longer while the
listener is connected.  After each (re)connection the listener wakes its worker once, for what
was queued while it was away.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from kvmgr.store.db import Store

log = logging.getLogger(__name__)

#: The channel tasks.submit / add_task / submit_many notify; workers listen on it.
TASKS = "kvmgr_tasks"
#: The channel every write to the events table notifies; each API replica's feed listens.
EVENTS = "kvmgr_events"
#: Seconds a listener waits for notifies before looking at its stop flag again.
WAIT = 1.0
#: Reconnection backoff: first and longest pause after the connection dropped.
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 10.0


def listens(store: Store) -> bool:
    """Whether the store's database can deliver notifies (PostgreSQL) rather than be polled."""
    return store.engine.dialect.name == "postgresql"


def notify(session: Session, channel: str) -> None:
    """Notify ``channel`` when ``session``'s transaction commits (PostgreSQL; no-op elsewhere).
    Several notifies of one channel in one transaction reach each listener once."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})


def libpq_url(url: str) -> str:
    """The store's SQLAlchemy URL (``postgresql+psycopg://...``) as psycopg's conninfo URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """A thread with its own psycopg connection that ``LISTEN``s on ``channel`` and calls
    ``on_notify`` for each notify (and once after each (re)connection); reconnects with
    backoff when the connection drops, until :meth:`stop`."""

    def __init__(
        self, url: str, channel: str, on_notify: Callable[[], None], *, wait: float = WAIT
    ) -> None:
        self._conninfo = libpq_url(url)
        self.channel = channel
        self._on_notify = on_notify
        self._wait = wait
        self._stop = threading.Event()
        self._up = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections = 0  # successful (re)connections: read by tests

    @property
    def up(self) -> bool:
        """Connected and listening: a notify sent now reaches ``on_notify``."""
        return self._up.is_set()

    def wait_up(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"kvmgr-listen-{self.channel}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._wait + 5)
            self._thread = None
        self._up.clear()

    def _run(self) -> None:
        import psycopg

        pause = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                # connect_timeout: a server that does not answer must not hold stop() up long.
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {self.channel}")  # a constant of this module
                    self.connections += 1
                    self._up.set()
                    pause = BACKOFF_FIRST
                    self._on_notify()  # what was queued while we were not listening
                    while not self._stop.is_set():
                        for _notify in conn.notifies(timeout=self._wait):
                            self._on_notify()
            except psycopg.Error as err:
                self._up.clear()
                if self._stop.is_set():
                    return
                log.warning(
                    "listening on %s failed (%s); retrying in %.1f s", self.channel, err, pause
                )
            except Exception:  # a bug in on_notify: keep listening, the poll covers the gap
                self._up.clear()
                log.exception("listener of %s failed", self.channel)
            self._up.clear()
            self._stop.wait(pause)
            pause = min(BACKOFF_MAX, pause * 2)


def start_listener(store: Store, channel: str, on_notify: Callable[[], None]) -> Listener | None:
    """A started :class:`Listener` on the store's database, or None where it cannot notify."""
    if not listens(store):
        return None
    listener = Listener(store.url, channel, on_notify)
    listener.start()
    return listener


def idle_wait(listener: Listener | None, poll: float, listening_poll: float) -> float:
    """Seconds an idle loop waits between looks: ``poll``, or at least ``listening_poll`` while
    ``listener`` is connected (the notify wakes it earlier)."""
    if listener is not None and listener.up:
        return max(poll, listening_poll)
    return poll
