"""A worker: claims tasks from the database queue and runs them, in ``kvmgr worker`` or inside
``kvmgr serve``.

Several workers (processes, on one machine or many) share one queue; each claim is exclusive
(kvmgr.control.tasks.claim).  A worker heartbeats the tasks it holds and, while housekeeping,
looks for tasks of workers that stopped: their heartbeat is stale, or their process on this
machine is gone (told at once from the worker id: host, pid and the process's start time).  Such
a task is marked ``interrupted`` and the journal's recovery runs; it is never re-run, because
half of it may have happened.

``stop()`` (SIGTERM in ``kvmgr worker``) stops claiming and lets running tasks finish within a
grace period; a task still running after it is left to the recovery of the next worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from kvmgr.connect import Connection
from kvmgr.control import backup_schedules, events, notify, tasks
from kvmgr.control.authz import state_dirs
from kvmgr.control.host_events import HostEventOwners
from kvmgr.control.plane import ControlPlane
from kvmgr.errors import KvmgrError, NotFound
from kvmgr.store import audit
from kvmgr.store.db import Store
from kvmgr.store.models import User
from kvmgr.store.users import Principal

log = logging.getLogger(__name__)

#: Seconds between heartbeats (and between looks for tasks of dead workers).
BEAT = 5.0
#: Seconds between looks for cancels of running tasks.
CANCEL_POLL = 1.0
#: A task whose heartbeat is older than this belongs to a dead worker (any machine).
STALE_AFTER = timedelta(seconds=30)
#: Seconds between looks when idle while the PostgreSQL listener is connected: a queued task
#: wakes the worker by notify (kvmgr.control.notify), so the poll is only the fallback.
LISTENING_POLL = 5.0


def new_worker_id() -> str:
    """``host:pid:start-ticks:random`` -- the pid with its start time names one process even
    after the pid is reused; the random part tells two workers of one process apart."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}:{uuid.uuid4().hex[:8]}"


def _start_ticks(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat.rpartition(")")[2].split()[19]


def process_gone(worker: str) -> bool:
    """True when ``worker`` ran on this machine and its process no longer exists.  A worker of
    another machine is judged by its heartbeat alone."""
    parts = worker.split(":")
    if len(parts) != 4 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    return _start_ticks(int(parts[1])) != parts[2]


def registered_hosts(store: Store) -> Callable[[], dict[str, str]]:
    """Name -> URI of every registered host, read afresh on each call."""
    from kvmgr.control.hosts import HostRegistry

    return lambda: {host.name: host.uri for host in HostRegistry(store).all()}


def owner_principal(store: Store, owner_id: int | None, owner: str) -> Principal:
    """The submitter as they are now (a role lowered since submission counts)."""
    with store.session() as session:
        user = session.get(User, owner_id) if owner_id is not None else None
        if user is None:
            raise NotFound(
                f"user {owner!r} who submitted the task no longer exists",
                hint="a deleted user's queued tasks do not run; resubmit as another user",
            )
        return Principal(id=user.id, name=user.name, role=user.role_enum, group=user.group)


class Worker:
    """Runs queued tasks in ``concurrency`` threads until :meth:`stop`."""

    def __init__(
        self,
        store: Store,
        connect: Callable[[str], Connection],
        *,
        concurrency: int = 2,
        poll: float = 0.5,
        beat: float = BEAT,
        stale_after: timedelta = STALE_AFTER,
        recover: Callable[[], object] | None = None,
        worker_id: str | None = None,
        state_dir: Path | None = None,
        host_events: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        tasks.load_kinds()
        self.store = store
        self.connect = connect
        self.id = worker_id or new_worker_id()
        #: Acts as each task's submitter (for_actor); its own name shows on recoveries it runs.
        self.plane = ControlPlane(store, f"worker:{self.id}", connect)
        self.state_dirs = state_dirs(state_dir)
        self.concurrency = concurrency
        self.poll = poll
        self.beat = beat
        self.stale_after = stale_after
        self._recover = recover or self._journal_recovery
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._held: set[str] = set()
        self._cancels: dict[str, threading.Event] = {}  # running cancellable task -> its cancel
        self._held_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        #: PostgreSQL: wakes this worker when any process queues a task.  SQLite has no
        #: notification between processes, so there the worker only polls.
        self.listener: notify.Listener | None = None
        #: Watches the lifecycle events of the hosts ``host_events()`` lists (name -> URI),
        #: each host by one worker of the fleet (kvmgr.control.host_events).
        self.host_owners = (
            HostEventOwners(store, self.plane, host_events) if host_events is not None else None
        )
        self.ran = 0  # tasks finished by this worker: read by tests and the bench

    # ------------------------------------------------------------------ lifetime
    def start(self) -> None:
        self._stop.clear()
        self.listener = notify.start_listener(self.store, notify.TASKS, self.wake)
        # What dead processes left half done, then their tasks, before any new work.
        log.info("journal recovery at worker start: %s", self._journal_recovery())
        self.housekeep()
        self.fire_schedules()  # a window missed while no worker ran fires now, once
        for number in range(self.concurrency):
            thread = threading.Thread(target=self._run, name=f"kvmgr-worker-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        keeper = threading.Thread(target=self._keep, name="kvmgr-worker-beat", daemon=True)
        keeper.start()
        self._threads.append(keeper)
        if self.host_owners is not None:
            self.host_owners.start()
        log.info("worker %s started (%d threads)", self.id, self.concurrency)

    def stop(self, grace: float = 30.0) -> bool:
        """Stop claiming; wait up to ``grace`` seconds for running tasks.  True if none is left
        running (a task still running is recovered by the next worker)."""
        self._stop.set()
        self._wake.set()
        if self.host_owners is not None:
            self.host_owners.stop()
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        with self._held_lock:
            left = len(self._held)
        if left:
            log.warning("worker %s stopped with %d task(s) still running", self.id, left)
        return left == 0

    def wake(self) -> None:
        """A task was just queued (by this process, or by any, told by the listener): look now
        rather than at the next poll."""
        self._wake.set()

    @property
    def busy(self) -> int:
        with self._held_lock:
            return len(self._held)

    # ------------------------------------------------------------------ running tasks
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                claimed = tasks.claim(self.store, self.id)
            except KvmgrError as err:
                log.warning("cannot claim tasks: %s", err)
                claimed = None
            except Exception:  # a database hiccup must not kill the worker thread
                log.exception("claiming a task failed")
                claimed = None
            if claimed is None:
                self._wake.wait(notify.idle_wait(self.listener, self.poll, LISTENING_POLL))
                self._wake.clear()
                continue
            self.run_claimed(claimed)

    def run_claimed(self, claimed: tasks.Claimed) -> None:
        cancel = threading.Event()
        with self._held_lock:
            self._held.add(claimed.id)
            if claimed.kind in tasks.CANCELLABLE_KINDS:
                self._cancels[claimed.id] = cancel
        try:
            result, error = self._execute(claimed, cancel)
            if not tasks.complete(self.store, self.id, claimed.id, result=result, error=error):
                log.warning("task %s was taken from this worker before it ended", claimed.id)
            self._audit(claimed, error)
            self.ran += 1
        finally:
            with self._held_lock:
                self._held.discard(claimed.id)
                self._cancels.pop(claimed.id, None)

    def _execute(
        self, claimed: tasks.Claimed, cancel: threading.Event
    ) -> tuple[dict[str, object] | None, str | None]:
        try:
            owner = tasks.system_principal(
                claimed.kind, claimed.owner_id, claimed.owner
            ) or owner_principal(self.store, claimed.owner_id, claimed.owner)
            handler = tasks.KINDS.get(claimed.kind)
            if handler is None:
                raise NotFound(
                    f"this worker does not know task kind {claimed.kind!r}",
                    hint="run the same kvmgr version on every worker",
                )

            def report(message: str, percent: int | None) -> None:
                tasks.report(self.store, self.id, claimed.id, message, percent)

            def measured(message: str, percent: int | None, live: dict[str, Any]) -> None:
                tasks.report(self.store, self.id, claimed.id, message, percent, live=live)

            context = tasks.TaskContext(
                task_id=claimed.id,
                kind=claimed.kind,
                host=claimed.host,
                owner=owner,
                worker=self.id,
                store=self.store,
                connect=self.connect,
                plane=self.plane.for_actor(owner.name),
                state_dirs=self.state_dirs,
                report=report,
                measured=measured,
                cancel=cancel,
            )
            return handler(context, claimed.params), None
        except Exception as err:  # a bug in a task must still end the task, not the worker
            if not isinstance(err, KvmgrError):
                log.exception("task %s (%s) raised", claimed.id, claimed.kind)
            return None, tasks.describe_error(err)

    def _audit(self, claimed: tasks.Claimed, error: str | None) -> None:
        if claimed.kind == "noop":
            return  # the queue's own probe; not an action on anything
        with self.store.session() as session:
            audit.record(
                session,
                user=claimed.owner,
                action=claimed.kind,
                target=claimed.target,
                result="error" if error else "ok",
                detail=error or "",
            )

    # ------------------------------------------------------------------ housekeeping
    def _keep(self) -> None:
        last_beat = last_prune = time.monotonic()
        while not self._stop.wait(min(self.beat, CANCEL_POLL)):
            try:
                self._pass_on_cancels()
                if time.monotonic() - last_beat < self.beat:
                    continue
                last_beat = time.monotonic()
                with self._held_lock:
                    held = list(self._held)
                tasks.heartbeat(self.store, self.id, held)
                self.housekeep()
                self.fire_schedules()
                if time.monotonic() - last_prune > 60:
                    with self.store.session() as session:
                        events.prune(session)
                    last_prune = time.monotonic()
            except Exception:  # the next beat tries again; a worker must outlive a DB blip
                log.exception("worker housekeeping failed")

    def _pass_on_cancels(self) -> None:
        """Set the cancel of each running task someone cancelled (one query, only while a
        cancellable task runs)."""
        with self._held_lock:
            watched = {
                task_id: event for task_id, event in self._cancels.items() if not event.is_set()
            }
        if not watched:
            return
        for task_id in tasks.cancels_requested(self.store, self.id, watched):
            log.info("task %s: cancel requested", task_id)
            watched[task_id].set()

    def housekeep(self) -> list[str]:
        """Mark tasks of dead workers interrupted and run the journal's recovery for them.
        Returns the ids this call interrupted."""
        dead = tasks.stale(
            self.store,
            older_than=self.stale_after,
            dead=lambda worker: worker != self.id and process_gone(worker),
        )
        theirs = []
        for claimed in dead:
            with self._held_lock:
                if claimed.id not in self._held:  # ours and alive: a slow beat, not a death
                    theirs.append(claimed)
        if not theirs:
            return []
        # Recovery first, so the task's message can say what it did with the half-done work.
        why = f"its worker stopped before the task ended; recovery: {self._recover()}"
        interrupted = [
            claimed.id for claimed in theirs if tasks.mark_interrupted(self.store, claimed.id, why)
        ]
        if interrupted:
            log.warning("%d task(s) of dead workers marked interrupted", len(interrupted))
        return interrupted

    def fire_schedules(self) -> list[int]:
        """Queue the backup windows that are due (kvmgr.control.backup_schedules): of several
        workers on one database exactly one queues each window.  Returns the runs queued."""
        try:
            fired = backup_schedules.fire_due(self.store)
        except Exception:  # a schedule that cannot fire must not stop the housekeeping
            log.exception("firing backup schedules failed")
            return []
        if fired:
            log.info("queued %d scheduled backup run(s)", len(fired))
            self._wake.set()
        return fired

    def _journal_recovery(self) -> str:
        """The journal's recovery (kvmgr.control.recovery) of the operations dead holders left:
        the task's half-done steps are finished or undone there, never re-run here."""
        try:
            outcomes = self.plane.recover()
        except KvmgrError as err:
            return f"failed: {err}"
        if not outcomes:
            return "nothing was left half done"
        return "; ".join(outcome.line() for outcome in outcomes)
