"""The API runs create, disk add, snapshot and delete as journaled operations of the control
plane (test driver): each leaves an operations row, and a failing step is undone from its journal
with the row saying so."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi import FastAPI

from kvmgr.errors import OperationFailed
from kvmgr.services import create as create_service
from tests.api.conftest import As


def wait_task(caller: As, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = caller.get(f"/api/v1/tasks/{task_id}").json()
        if task["state"] in ("done", "failed") or time.monotonic() > deadline:
            return task
        time.sleep(0.05)


def _operations(app: FastAPI) -> list[Any]:
    return app.state.ctx.plane.operations(include_done=True)


def test_create_and_delete_are_journaled(app: FastAPI, as_user: dict[str, As]) -> None:
    admin = as_user["admin"]
    body = {"name": "t-jrnl-api", "memory": "128M", "vcpus": 1, "disks": ["1G"], "start": False}
    answer = admin.post("/api/v1/vms", json=body)
    assert answer.status_code == 202, answer.text
    assert wait_task(admin, answer.json()["id"])["state"] == "done"
    assert admin.delete("/api/v1/vms/t-jrnl-api").status_code == 200
    kinds = [(op.kind, op.target, op.state) for op in _operations(app)]
    assert ("create", "t-jrnl-api", "done") in kinds
    assert ("delete", "t-jrnl-api", "done") in kinds


def test_a_failing_create_is_undone_from_its_journal(
    app: FastAPI, as_user: dict[str, As], monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = as_user["admin"]

    def define_fails(*_args: Any, **_kwargs: Any) -> Any:
        raise OperationFailed("injected: defining failed")

    monkeypatch.setattr(create_service, "build_domain", define_fails)
    body = {"name": "t-jrnl-bad", "memory": "128M", "vcpus": 1, "disks": ["1G"], "start": False}
    task = wait_task(admin, admin.post("/api/v1/vms", json=body).json()["id"])
    assert task["state"] == "failed" and "injected" in str(task["error"])
    failed = [op for op in _operations(app) if op.target == "t-jrnl-bad"]
    assert [op.state for op in failed] == ["failed"]
    volumes = admin.get("/api/v1/pools/default/volumes").json()
    assert not [v for v in volumes if v["name"].startswith("t-jrnl-bad")]
