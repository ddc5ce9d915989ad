"""QA with hostile input: a bad name is a 422 at once (no task that fails later, nothing made),
and every refused change leaves an audit row, including requests of the wrong shape."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.api.conftest import As

HOSTILE_NAMES = ["../etc", "<script>alert(1)</script>", "a'b\"c", "ünïcödé", "x" * 10_000]


def _audit(as_user: dict[str, As]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = as_user["admin"].get("/api/v1/audit?limit=500").json()
    return rows


def _tasks(as_user: dict[str, As]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = as_user["admin"].get("/api/v1/tasks").json()
    return rows


@pytest.mark.parametrize("bad", HOSTILE_NAMES)
@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/v1/vms", {"name": "{bad}", "memory": "64M", "disks": []}),
        ("/api/v1/vms/test/snapshots", {"name": "{bad}"}),
        ("/api/v1/vms/test/clone", {"name": "{bad}"}),
        ("/api/v1/vms/test/clone", {"name": "t-qa2-c", "snapshot": "{bad}"}),
        ("/api/v1/isos", {"path": "/nonexistent.iso", "name": "{bad}"}),
    ],
)
def test_a_bad_name_is_refused_before_any_task_starts(
    as_user: dict[str, As], url: str, body: dict[str, str], bad: str
) -> None:
    payload = {key: bad if value == "{bad}" else value for key, value in body.items()}
    tasks_before = len(_tasks(as_user))
    answer = as_user["admin"].post(url, json=payload)
    assert answer.status_code == 422, answer.text
    assert "name" in answer.json()["error"] or "snapshot" in answer.json()["error"]
    assert answer.json()["hint"]
    assert len(_tasks(as_user)) == tasks_before  # no task was queued to fail later


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "/api/v1/vms", [1, 2]),
        ("POST", "/api/v1/vms", {"name": "t-qa2-x", "vcpus": -1}),
        ("POST", "/api/v1/networks", "not an object"),
        ("POST", "/api/v1/pools", {"name": "t-qa2-p"}),
        ("PATCH", "/api/v1/vms/test/resources", {"vcpus": 10**30}),
        ("POST", "/api/v1/users", {"name": "bob", "password": "x" * 20, "role": "god"}),
    ],
)
def test_a_request_of_the_wrong_shape_is_a_422_and_is_audited(
    as_user: dict[str, As], method: str, url: str, body: Any
) -> None:
    caller = "op1" if url.startswith("/api/v1/vms") else "admin"
    answer = as_user[caller].request(method, url, json=body)
    assert answer.status_code == 422, answer.text
    assert "Traceback" not in answer.text
    latest = _audit(as_user)[0]
    assert latest["result"] == "error"
    assert latest["action"] == f"{method} {url}"
    assert latest["detail"] == answer.json()["error"]


def test_an_anonymous_request_of_the_wrong_shape_is_refused_as_unauthenticated(
    client: TestClient, app: FastAPI
) -> None:
    # Who is asking is checked before the body: strangers learn nothing about the schema.
    answer = client.post("/api/v1/vms", json=[1])
    assert answer.status_code == 401
