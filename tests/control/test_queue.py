"""The task queue on SQLite: exclusive claims across processes, visibility per user, cancel,
and a worker killed with SIGKILL mid-task (its task is interrupted and recovered, never re-run).
"""

from __future__ import annotations

import os
import signal
import socket
from collections import Counter
from pathlib import Path

import pytest

import tests.control.worker_proc  # noqa: F401  - registers the test kinds for submit()
from kvmgr.control import tasks
from kvmgr.control.worker import Worker, new_worker_id, process_gone
from kvmgr.errors import InvalidInput, NotFound
from kvmgr.store import users
from kvmgr.store.db import Store
from kvmgr.store.models import Task
from tests.control.conftest import WorkerProcesses, principals, wait_for


def _states(store: Store, ids: list[str]) -> Counter[str]:
    with store.session() as session:
        rows = session.query(Task.state).filter(Task.id.in_(ids)).all()
    return Counter(state for (state,) in rows)


def test_a_claim_is_exclusive_and_ends_once(store: Store) -> None:
    people = principals(store)
    queued = tasks.submit(store, "noop", {}, owner=people["ann"], target="x")
    first = tasks.claim(store, "w1")
    assert first is not None and first.id == queued["id"]
    assert tasks.claim(store, "w2") is None  # nothing left: the one task is w1's
    assert not tasks.complete(store, "w2", first.id, result={})  # not w2's to end
    assert tasks.complete(store, "w1", first.id, result={"ok": True})
    assert not tasks.complete(store, "w1", first.id, result={})  # ended already
    with store.session() as session:
        row = tasks.get_task(session, people["ann"], first.id)
        assert (row.state, row.attempts, row.claimed_by) == ("done", 1, "w1")


def test_only_the_submitter_and_admins_see_a_task(store: Store) -> None:
    people = principals(store)
    task = tasks.submit(store, "noop", {}, owner=people["ann"], target="x")
    with store.session() as session:
        for name, sees in (("ann", True), ("boss", True), ("bob", False)):
            listed = {row.id for row in tasks.list_tasks(session, people[name])}
            assert (task["id"] in listed) is sees, name
        with pytest.raises(NotFound):
            tasks.get_task(session, people["bob"], task["id"])  # a group mate, not the owner
    with pytest.raises(NotFound):
        tasks.cancel(store, people["bob"], task["id"])
    assert tasks.cancel(store, people["ann"], task["id"])["state"] == "cancelled"
    assert tasks.claim(store, "w1") is None  # a cancelled task never runs
    with pytest.raises(InvalidInput):
        tasks.cancel(store, people["ann"], task["id"])


def test_a_deleted_submitter_s_task_fails_without_running(store: Store, tmp_path: Path) -> None:
    people = principals(store)
    log = tmp_path / "ran.log"
    task = tasks.submit(store, "test.append", {"log": str(log)}, owner=people["bob"], target="x")
    with store.session() as session:
        users.delete_user(session, "bob")
    worker = Worker(store, lambda _host: pytest.fail("no host needed"))
    claimed = tasks.claim(store, worker.id)
    assert claimed is not None
    worker.run_claimed(claimed)
    with store.session() as session:
        row = tasks.get_task(session, people["boss"], task["id"])
        assert row.state == "failed" and "no longer exists" in (row.error or "")
    assert not log.exists()


def test_two_worker_processes_run_each_task_exactly_once(
    store: Store, tmp_path: Path, worker_procs: WorkerProcesses
) -> None:
    people = principals(store)
    url = store.url
    _one, first = worker_procs.start(url)
    _two, second = worker_procs.start(url)
    log = tmp_path / "ran.log"
    ids = [
        tasks.submit(store, "test.append", {"log": str(log)}, owner=people["ann"], target=str(n))[
            "id"
        ]
        for n in range(200)
    ]
    wait_for(lambda: _states(store, ids)["done"] == len(ids), 120, "200 tasks done")
    lines = [line.split() for line in log.read_text().splitlines()]
    ran = Counter(task_id for task_id, _worker in lines)
    assert set(ran) == set(ids) and max(ran.values()) == 1  # each exactly once
    by_worker = Counter(worker for _task_id, worker in lines)
    assert set(by_worker) == {first, second}, by_worker  # both took part
    with store.session() as session:
        attempts = {row.attempts for row in session.query(Task).filter(Task.id.in_(ids))}
    assert attempts == {1}


def test_a_worker_killed_mid_task_has_it_interrupted_and_recovered_not_rerun(
    store: Store, tmp_path: Path, worker_procs: WorkerProcesses
) -> None:
    people = principals(store)
    proc, killed_id = worker_procs.start(store.url, threads=1)
    started = tmp_path / "started"
    params = {"started": str(started), "seconds": 120}
    task = tasks.submit(store, "test.sleep", params, owner=people["ann"], target="slow")
    wait_for(started.exists, 30, "the task to start")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert process_gone(killed_id) and not process_gone(new_worker_id())

    recoveries: list[str] = []

    def recover() -> str:  # stands in for the journal's recovery (plane.recover)
        recoveries.append("ran")
        return "2 undone"

    survivor = Worker(store, lambda _host: pytest.fail("no host"), recover=recover)
    assert survivor.housekeep() == [task["id"]]
    assert recoveries == ["ran"]
    with store.session() as session:
        row = tasks.get_task(session, people["ann"], task["id"])
        assert row.state == "interrupted" and row.attempts == 1
        assert "worker stopped" in (row.error or "") and "2 undone" in (row.error or "")
    assert survivor.housekeep() == []  # once
    assert tasks.claim(store, survivor.id) is None  # and never queued again


def test_a_silent_worker_elsewhere_is_judged_by_its_heartbeat(store: Store) -> None:
    people = principals(store)
    task = tasks.submit(store, "noop", {}, owner=people["ann"], target="x")
    elsewhere = "other-machine:1:1:abcd"
    assert not process_gone(elsewhere)  # another machine's process: cannot look
    assert socket.gethostname() != "other-machine"
    assert tasks.claim(store, elsewhere) is not None
    fresh = Worker(store, lambda _host: pytest.fail("no host"))
    assert fresh.housekeep() == []  # its heartbeat is fresh
    fresh.stale_after = fresh.stale_after * 0  # any heartbeat is now too old
    assert fresh.housekeep() == [task["id"]]


def test_a_running_task_s_measurements_show_as_result_live_until_it_ends(store: Store) -> None:
    """``report(..., live=)`` (a migration's job stats for the web page) is the running task's
    ``result.live``; the handler's result replaces it, and a plain report leaves it alone."""
    people = principals(store)
    queued = tasks.submit(store, "noop", {}, owner=people["ann"], target="x")
    claimed = tasks.claim(store, "w1")
    assert claimed is not None and claimed.id == queued["id"]
    tasks.report(store, "w1", claimed.id, "memory: 10 MiB left", 40, live={"memory_remaining": 10})
    tasks.report(store, "w1", claimed.id, "still going", None)
    with store.session() as session:
        row = tasks.as_dict(tasks.get_task(session, people["ann"], claimed.id))
    assert row["result"] == {"live": {"memory_remaining": 10}}
    assert (row["message"], row["progress"]) == ("still going", 40)
    assert tasks.complete(store, "w1", claimed.id, result={"moved": True})
    with store.session() as session:
        assert tasks.get_task(session, people["ann"], claimed.id).result == {"moved": True}
