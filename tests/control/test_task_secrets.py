"""Task secrets (kvmgr.control.task_secrets): stored with the task, taken once, and gone when the
task ends however it ends, including the ways in which no handler ever took them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kvmgr.control import task_secrets, tasks
from kvmgr.errors import InvalidInput
from kvmgr.store.db import Store
from kvmgr.store.models import Task
from tests.control.conftest import principals

SECRETS = {"password": "pw-never-in-params", "product_key": "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE"}


def _submit(store: Store) -> str:
    task = tasks.submit(
        store, "noop", {"x": 1}, owner=principals(store)["ann"], target="t", secrets=SECRETS
    )
    assert task_secrets.names(store, task["id"]) == ["password", "product_key"]
    with store.session() as session:
        row = session.get(Task, task["id"])
        assert row is not None and "pw-never" not in repr(row.params)
    return str(task["id"])


def test_taken_once_then_gone(store: Store) -> None:
    task_id = _submit(store)
    assert task_secrets.take(store, task_id) == SECRETS
    assert task_secrets.take(store, task_id) == {}
    assert task_secrets.names(store, task_id) == []


def test_a_task_that_ends_without_taking_them_drops_them(store: Store) -> None:
    done, failed = _submit(store), _submit(store)
    for task_id, error in ((done, None), (failed, "it broke")):
        claimed = tasks.claim(store, "w1")
        assert claimed is not None and claimed.id == task_id
        assert tasks.complete(store, "w1", task_id, result={}, error=error)
        assert task_secrets.names(store, task_id) == [], error


def test_cancelled_while_queued_or_interrupted_drops_them(store: Store) -> None:
    people = principals(store)
    queued = _submit(store)
    tasks.cancel(store, people["ann"], queued)
    assert task_secrets.names(store, queued) == []
    running = _submit(store)
    assert tasks.claim(store, "w-dead") is not None
    dead = tasks.stale(store, older_than=timedelta(0), dead=lambda _worker: True)
    assert [claimed.id for claimed in dead] == [running]
    assert tasks.mark_interrupted(store, running, "its worker died")
    assert task_secrets.names(store, running) == []


def test_a_task_that_cannot_be_stored_stores_no_secrets(store: Store) -> None:
    with pytest.raises(InvalidInput):
        tasks.submit(store, "no-such-kind", {}, owner=principals(store)["ann"], target="t",
                     secrets=SECRETS)  # fmt: skip
    with store.session() as session:
        assert session.query(task_secrets.TaskSecret).count() == 0
    with pytest.raises(InvalidInput, match="task secret name"):
        tasks.submit(store, "noop", {}, owner=principals(store)["ann"], target="t",
                     secrets={"x" * 40: "v"})  # fmt: skip
    with store.session() as session:  # the task row went with the refused secret
        assert session.query(Task).count() == 0
        assert "pw-never" not in repr(
            task_secrets.TaskSecret(task_id="t", name="n", value="pw-never")
        )
