"""Cancelling a running task: a kind that can stop half way (vm.migrate) is asked to stop by
its worker and ends 'cancelled'; any other running kind is refused with the reason."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kvmgr.control import tasks
from kvmgr.control.tasks import TaskContext, task_kind
from kvmgr.control.worker import Worker
from kvmgr.errors import InvalidInput, InvalidState
from kvmgr.store.db import Store
from kvmgr.store.models import Task
from kvmgr.store.users import Principal
from tests.control.conftest import principals, wait_for

release = threading.Event()


@task_kind("test.stoppable", cancellable=True)
def _stoppable(ctx: TaskContext, _params: dict[str, Any]) -> dict[str, Any]:
    ctx.report("working", 10)
    if ctx.cancel.wait(30):
        raise InvalidState("stopped on a cancel; nothing was changed")
    return {"finished": True}


@task_kind("test.unstoppable")
def _unstoppable(ctx: TaskContext, _params: dict[str, Any]) -> dict[str, Any]:
    ctx.report("working", 10)
    release.wait(30)
    return {"finished": True}


@pytest.fixture
def worker(store: Store) -> Iterator[Worker]:
    release.clear()
    running = Worker(store, lambda _host: pytest.fail("no host needed"), poll=0.05, beat=0.5)
    running.start()
    yield running
    release.set()
    running.stop(grace=10)


@pytest.fixture
def people(store: Store) -> dict[str, Principal]:
    return principals(store)  # once: each login is an argon2 hash


def _state(store: Store, task_id: str) -> dict[str, Any]:
    with store.session() as session:
        row = session.get(Task, task_id)
        assert row is not None
        return tasks.as_dict(row)


def test_a_running_cancellable_task_stops_and_ends_cancelled(
    store: Store, worker: Worker, people: dict[str, Principal]
) -> None:
    ann = people["ann"]
    task = tasks.submit(store, "test.stoppable", {}, owner=ann, target="x")
    wait_for(lambda: _state(store, task["id"])["message"] == "working", 10, "the task to run")
    asked = tasks.cancel(store, ann, task["id"])
    assert asked["state"] == "running" and asked["cancel_requested"]
    assert asked["message"] == "cancel requested by ann"
    wait_for(lambda: _state(store, task["id"])["state"] == "cancelled", 10, "the cancel")
    ended = _state(store, task["id"])
    assert ended["message"] == "cancelled" and "stopped on a cancel" in (ended["error"] or "")
    bob = people["bob"]
    second = tasks.submit(store, "test.stoppable", {}, owner=ann, target="y")
    wait_for(lambda: _state(store, second["id"])["message"] == "working", 10, "the task to run")
    with pytest.raises(Exception, match="does not exist"):
        tasks.cancel(store, bob, second["id"])  # not bob's: as if it did not exist
    tasks.cancel(store, people["boss"], second["id"])  # admins cancel any
    wait_for(lambda: _state(store, second["id"])["state"] == "cancelled", 10, "the cancel")


def test_a_running_task_that_cannot_stop_half_way_is_refused(
    store: Store, worker: Worker, people: dict[str, Principal]
) -> None:
    ann = people["ann"]
    task = tasks.submit(store, "test.unstoppable", {}, owner=ann, target="x")
    wait_for(lambda: _state(store, task["id"])["message"] == "working", 10, "the task to run")
    with pytest.raises(InvalidInput, match=r"test\.unstoppable cannot stop half way") as err:
        tasks.cancel(store, ann, task["id"])
    assert "test.stoppable" in (err.value.hint or "")  # the kinds that can be cancelled running
    release.set()
    wait_for(lambda: _state(store, task["id"])["state"] == "done", 10, "the task to finish")
