"""POST /api/v1/vms for Windows: the passwords and the product key wait as task secrets.

The app here runs no worker of its own, so a task stays queued until a test runs one
(:func:`_worker`): the secrets are seen while the task is queued, and gone once it ran, failed
or was cancelled.  Nothing readable (the answer, GET /api/v1/tasks, the audit, every other table
of the database) ever holds them.  The install itself runs in
tests/integration/test_windows_install.py (the answer CD read back).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, select

from kvmgr.api.app import create_app
from kvmgr.control import task_secrets
from kvmgr.control.worker import Worker
from kvmgr.store import users
from kvmgr.store.models import Role
from tests.api.conftest import PASSWORD, As, make_settings
from tests.api.test_vms import wait_task
from tests.integration.test_windows_install import build_windows_iso

SECRET = "Win-api-secret-never-kept"
ROOT_SECRET = "Admin-api-secret-never-kept"
KEY = "VK7JG-NPHTM-C97JM-9MPGT-3V66T"  # Microsoft's published generic key for Windows 10 Pro


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    application = create_app(make_settings(tmp_path_factory.mktemp("winapi"), worker=False))
    with application.state.ctx.store.session() as session:
        users.create_user(session, "admin", PASSWORD, Role.admin, None)
    yield application


@pytest.fixture(scope="module")
def caller(app: FastAPI) -> Iterator[dict[str, As]]:
    with app.state.ctx.store.session() as session:
        tokens = {"admin": users.create_token(session, "admin", "tests")}
    with TestClient(app) as client:
        yield {name: As(client, token) for name, token in tokens.items()}


@pytest.fixture(scope="module")
def windows_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_windows_iso(tmp_path_factory.mktemp("winiso") / "win10.iso")


@contextmanager
def _worker(app: FastAPI) -> Iterator[Worker]:
    ctx = app.state.ctx
    worker = Worker(ctx.store, ctx.host_conn, poll=0.05, beat=0.5)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(10)


def _dump_database(app: FastAPI) -> str:
    """Every row of every table but task_secrets, as text."""
    engine = app.state.ctx.store.engine
    meta = MetaData()
    meta.reflect(engine)
    rows: list[Any] = []
    with engine.connect() as connection:
        for table in meta.sorted_tables:
            if table.name != "task_secrets":
                rows.append([table.name, [list(row) for row in connection.execute(select(table))]])
    return json.dumps(rows, default=str)


def _readable(app: FastAPI, who: As, admin: As, task_id: str) -> str:
    shown = [
        who.get("/api/v1/tasks").text,
        who.get(f"/api/v1/tasks/{task_id}").text,
        admin.get("/api/v1/audit").text,
    ]
    return "\n".join(shown) + _dump_database(app)


def _params(app: FastAPI, task_id: str) -> dict[str, Any]:
    from kvmgr.store.models import Task

    with app.state.ctx.store.session() as session:
        row = session.get(Task, task_id)
        assert row is not None and row.params is not None
        return dict(row.params)


def _windows_body(name: str, iso: Path, **unattended: Any) -> dict[str, Any]:
    return {
        "name": name,
        "iso": str(iso),
        "graphics": "none",
        "wait": "installed",
        "unattended": {"user": "alice", "password": SECRET, "root_password": ROOT_SECRET,
                       "product_key": KEY.lower(), **unattended},
    }  # fmt: skip


def test_windows_secrets_wait_while_queued_and_go_when_it_fails(
    app: FastAPI, caller: dict[str, As], windows_iso: Path
) -> None:
    # Detected from the ISO (os "auto"); the answer file is rendered, and the test driver then
    # cannot upload its CD, so the task fails in the worker with no Setup to wait for.
    body = _windows_body("t-winapi-fail", windows_iso)
    answer = caller["admin"].post("/api/v1/vms", json=body)
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["id"]
    store = app.state.ctx.store
    assert task_secrets.names(store, task_id) == ["password", "product_key", "root_password"]
    stored = _params(app, task_id)["unattended"]
    assert stored["secrets"] == ["password", "product_key", "root_password"]
    assert not {"password", "root_password", "product_key", "password_hash"} & set(stored)
    for secret in (SECRET, ROOT_SECRET, KEY, KEY.lower()):
        assert secret not in answer.text + _readable(app, caller["admin"], caller["admin"], task_id)

    with _worker(app):
        task = wait_task(caller["admin"], task_id)
    assert task["state"] == "failed" and "uploading volume" in task["error"], task
    assert task_secrets.names(store, task_id) == []
    readable = _readable(app, caller["admin"], caller["admin"], task_id)
    for secret in (SECRET, ROOT_SECRET, KEY, KEY.lower()):
        assert secret not in readable


def test_a_cancelled_windows_create_leaves_no_secrets(
    app: FastAPI, caller: dict[str, As], windows_iso: Path
) -> None:
    answer = caller["admin"].post("/api/v1/vms", json=_windows_body("t-winapi-cancel", windows_iso))
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["id"]
    store = app.state.ctx.store
    assert task_secrets.names(store, task_id) == ["password", "product_key", "root_password"]
    cancelled = caller["admin"].post(f"/api/v1/tasks/{task_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert task_secrets.names(store, task_id) == []


def test_a_named_windows_os_decides_without_reading_the_iso(
    app: FastAPI, caller: dict[str, As], tmp_path: Path
) -> None:
    """``os: win10`` on a file no one can identify: Windows all the same (the OS is named)."""
    iso = tmp_path / "unknown.iso"
    iso.write_bytes(b"no ISO 9660 here" * 100)
    body = {**_windows_body("t-winapi-named", iso), "os": "win10"}
    answer = caller["admin"].post("/api/v1/vms", json=body)
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["id"]
    assert task_secrets.names(app.state.ctx.store, task_id) == [
        "password", "product_key", "root_password"
    ]  # fmt: skip
    with _worker(app):
        task = wait_task(caller["admin"], task_id)
    assert task["state"] == "failed", task
    assert task_secrets.names(app.state.ctx.store, task_id) == []
    for secret in (SECRET, ROOT_SECRET, KEY):
        assert secret not in json.dumps(task) + _dump_database(app)


def test_a_linux_create_still_stores_hashes_and_no_secrets(
    app: FastAPI, caller: dict[str, As], tmp_path: Path
) -> None:
    iso = tmp_path / "rocky.iso"
    iso.write_bytes(b"not an ISO 9660 image" * 100)
    unattended = {"user": "alice", "password": SECRET, "root_password": ROOT_SECRET}
    body = {"name": "t-winapi-linux", "iso": str(iso), "graphics": "none", "unattended": unattended}
    answer = caller["admin"].post("/api/v1/vms", json=body)
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["id"]
    assert task_secrets.names(app.state.ctx.store, task_id) == []
    stored = _params(app, task_id)["unattended"]
    assert stored["password_hash"].startswith("$6$")
    assert stored["root_password_hash"].startswith("$6$")
    assert "secrets" not in stored
    assert SECRET not in _dump_database(app) and ROOT_SECRET not in _dump_database(app)
    caller["admin"].post(f"/api/v1/tasks/{task_id}/cancel")


def test_windows_refusals_are_422_and_make_no_task(
    app: FastAPI, caller: dict[str, As], windows_iso: Path, tmp_path: Path
) -> None:
    before = len(caller["admin"].get("/api/v1/tasks").json())
    bad_key = caller["admin"].post(
        "/api/v1/vms", json=_windows_body("t-winapi-key", windows_iso, product_key="ABCDE-12345")
    )
    assert bad_key.status_code == 422, bad_key.text
    assert "product key" in bad_key.json()["error"] and "XXXXX" in bad_key.json()["hint"]
    no_user = caller["admin"].post(
        "/api/v1/vms", json=_windows_body("t-winapi-user", windows_iso, user=None)
    )
    assert no_user.status_code == 422 and "needs a user" in no_user.json()["error"]
    long_name = caller["admin"].post(
        "/api/v1/vms", json=_windows_body("t-winapi-host", windows_iso, hostname="a-sixteen-chars1")
    )
    assert long_name.status_code == 422 and "NetBIOS" in long_name.json()["error"]
    zone = caller["admin"].post(
        "/api/v1/vms", json=_windows_body("t-winapi-tz", windows_iso, timezone="Mars/Olympus")
    )
    assert zone.status_code == 422 and "Windows name" in zone.json()["error"]
    # a product key for a target that is not Windows: refused, saying how to name the OS
    iso = tmp_path / "rocky.iso"
    iso.write_bytes(b"not an ISO 9660 image" * 100)
    linux = caller["admin"].post(
        "/api/v1/vms",
        json={"name": "t-winapi-lkey", "iso": str(iso), "unattended": {"product_key": KEY}},
    )
    assert linux.status_code == 422, linux.text
    assert "does not install Windows" in linux.json()["error"]
    assert "win10" in linux.json()["hint"]
    assert len(caller["admin"].get("/api/v1/tasks").json()) == before
    assert KEY not in _dump_database(app) and "ABCDE-12345" not in _dump_database(app)
