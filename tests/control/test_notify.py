"""Workers on PostgreSQL wake by LISTEN/NOTIFY when another process queues a task
(kvmgr.control.notify), and so does an API replica's event feed when an event row is written;
on SQLite they poll as before.

The PostgreSQL tests run a throw-away cluster (tests/pgcluster.py) and give the worker a 30 s
poll, so a claim within 2 s can only come from the notify.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from kvmgr.api.events import DatabaseEvents, EventBus
from kvmgr.control import notify, tasks
from kvmgr.control.worker import Worker
from kvmgr.store.db import Store
from kvmgr.store.models import Task
from tests.control.conftest import REPO, principals, wait_for
from tests.pgcluster import PostgresMissing, throwaway_postgres

#: Queues one noop task as "boss" from a process of its own, then exits.
SUBMIT = """
import sys
from kvmgr.control import tasks
from kvmgr.store import users
from kvmgr.store.db import Store
store = Store(sys.argv[1])
with store.session() as session:
    boss = users.authenticate(session, "boss", "password-1234")
print(tasks.submit(store, "noop", {}, owner=boss, target="t-notify")["id"])
store.dispose()
"""


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    try:
        with throwaway_postgres() as url:
            yield url
    except PostgresMissing as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def pg_store(pg_url: str) -> Iterator[Store]:
    store = Store(pg_url)
    principals(store)
    yield store
    store.dispose()


def submit_elsewhere(url: str) -> tuple[str, float]:
    """The id of a task another process queued, and the monotonic time its process ended (the
    commit, and so the notify, came before)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-c", SUBMIT, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip(), time.monotonic()


def state_of(store: Store, task_id: str) -> str:
    with store.session() as session:
        row = session.get(Task, task_id)
        return row.state if row is not None else "missing"


def idle_worker(store: Store) -> Worker:
    worker = Worker(store, lambda _host: pytest.fail("a noop task needs no host"), poll=30.0)
    worker.start()
    assert worker.listener is not None
    assert worker.listener.wait_up(10), "the listener did not connect"
    time.sleep(0.5)  # the wake-up after connecting is spent: the worker now waits its 30 s
    return worker


def claimed_within(store: Store, task_id: str, since: float, seconds: float) -> float:
    wait_for(lambda: state_of(store, task_id) in ("running", "done"), 10, f"task {task_id}")
    took = time.monotonic() - since
    assert took < seconds, f"claimed {took:.2f} s after submission; the notify did not wake it"
    return took


@pytest.mark.postgres
def test_a_task_queued_by_another_process_is_claimed_at_once(pg_store: Store) -> None:
    worker = idle_worker(pg_store)
    try:
        task_id, since = submit_elsewhere(pg_store.url)
        claimed_within(pg_store, task_id, since, 2.0)
        wait_for(lambda: state_of(pg_store, task_id) == "done", 10, "the task to end")
    finally:
        assert worker.stop(grace=5)
    assert worker.listener is None


@pytest.mark.postgres
def test_the_listener_reconnects_after_its_backend_is_killed(pg_store: Store) -> None:
    worker = idle_worker(pg_store)
    listener = worker.listener
    assert listener is not None
    try:
        with pg_store.session() as session:
            killed = session.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE query = :listen AND pid <> pg_backend_pid()"
                ),
                {"listen": f"LISTEN {notify.TASKS}"},
            )
        assert killed == 1
        wait_for(lambda: listener.connections == 2 and listener.up, 15, "the listener back")
        time.sleep(0.5)
        task_id, since = submit_elsewhere(pg_store.url)
        claimed_within(pg_store, task_id, since, 2.0)
    finally:
        worker.stop(grace=5)


@pytest.mark.postgres
def test_a_rolled_back_task_notifies_nobody(pg_store: Store) -> None:
    woken: list[float] = []
    listener = notify.Listener(pg_store.url, notify.TASKS, lambda: woken.append(time.monotonic()))
    listener.start()
    try:
        assert listener.wait_up(10)
        wait_for(lambda: len(woken) == 1, 5, "the wake-up after connecting")
        boss = principals(pg_store)["boss"]
        with pytest.raises(RuntimeError), pg_store.session() as session:
            tasks.add_task(session, "noop", {}, owner=boss, target="t-notify")
            raise RuntimeError("roll back")
        time.sleep(1.0)
        assert len(woken) == 1
        tasks.submit_many(pg_store, "noop", [{}, {}, {}], owner=boss, target="t-notify")
        wait_for(lambda: len(woken) == 2, 5, "one notify for the batch")
    finally:
        listener.stop()
    assert not listener.up


class Collected(EventBus):
    """A bus that keeps what is published, with the time it was."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[float, dict[str, Any]]] = []

    def publish(self, event: dict[str, Any]) -> None:
        self.got.append((time.monotonic(), event))


@pytest.mark.postgres
def test_the_event_feed_reads_at_once_what_another_process_wrote(pg_store: Store) -> None:
    bus = Collected()
    feed = DatabaseEvents(pg_store, bus, interval=30.0)
    feed.start()
    try:
        assert feed.listener is not None and feed.listener.wait_up(10)
        time.sleep(0.5)  # the wake-up after connecting is spent
        task_id, since = submit_elsewhere(pg_store.url)  # its task event row

        # (the feed's first read may also replay rows of the cursor's re-read window)
        def published() -> list[float]:
            return [at for at, event in bus.got if event.get("task", {}).get("id") == task_id]

        wait_for(lambda: bool(published()), 10, "the task's event on the bus")
        took = published()[0] - since
        assert took < 2.0, f"published {took:.2f} s after the write"
    finally:
        feed.stop()
    assert feed.listener is None


def test_sqlite_workers_poll_without_a_listener(store: Store) -> None:
    assert not notify.listens(store)
    worker = Worker(store, lambda _host: pytest.fail("a noop task needs no host"), poll=0.05)
    worker.start()
    try:
        assert worker.listener is None
        assert notify.idle_wait(worker.listener, worker.poll, 5.0) == 0.05
        boss = principals(store)["boss"]
        task = tasks.submit(store, "noop", {}, owner=boss, target="t-notify")
        wait_for(lambda: state_of(store, task["id"]) == "done", 5, "the polled claim")
    finally:
        worker.stop(grace=5)
