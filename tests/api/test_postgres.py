"""The store on a real PostgreSQL server: users, tokens, sessions, audit, tasks, ownership.

The fixture starts a throw-away cluster (initdb + pg_ctl as the 'postgres' user) in a temp dir on
a loopback port and removes it afterwards.  It skips, saying why, only when PostgreSQL is not
installed (scripts/install-test-deps.sh installs it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kvmgr.api.app import create_app
from kvmgr.control import ownership, tasks
from kvmgr.control.worker import Worker
from kvmgr.store import audit, users
from kvmgr.store.db import Store
from kvmgr.store.models import Role
from tests.api.conftest import make_settings
from tests.pgcluster import PostgresMissing, throwaway_postgres

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    try:
        with throwaway_postgres() as url:
            yield url
    except PostgresMissing as missing:
        pytest.skip(str(missing))


def test_users_tokens_and_sessions(pg_url: str) -> None:
    store = Store(pg_url)
    try:
        with store.session() as session:
            who = users.create_user(session, "pg-admin", "password-1", Role.admin, "ops")
            token = users.create_token(session, "pg-admin", "ci")
            cookie, csrf = users.open_web_session(session, who, timedelta(hours=1))
        with store.session() as session:
            assert users.authenticate(session, "pg-admin", "password-1") is not None
            assert users.authenticate(session, "pg-admin", "wrong-pass") is None
            assert users.principal_for_token(session, token).name == "pg-admin"
            assert users.principal_for_cookie(session, cookie).csrf_token == csrf
        ownership.record_owner(store, "vm", "uuid-1", who, label="t-api-pg")
        assert ownership.may_act(store, who, "vm", "uuid-1")
        assert ownership.owner_of(store, "vm", "uuid-1").owner == "pg-admin"  # type: ignore[union-attr]
        with store.session() as session:
            audit.record(session, user="pg-admin", action="x", target="y", result="ok")
            assert audit.entries(session)[0].action == "x"
    finally:
        store.dispose()


def test_tasks_run_from_postgres(pg_url: str) -> None:
    store = Store(pg_url)
    worker = Worker(store, lambda _host: pytest.fail("a noop task needs no host"), poll=0.05)
    try:
        with store.session() as session:
            owner = users.principal_for_token(session, users.create_token(session, "pg-admin", "t"))
        assert owner is not None
        task = tasks.submit(store, "noop", {}, owner=owner, target="t-api-pg")
        worker.start()
        deadline = time.monotonic() + 10
        while True:
            with store.session() as session:
                state = tasks.get_task(session, owner, task["id"]).state
            if state == "done" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert state == "done"
    finally:
        worker.stop()
        store.dispose()


def test_the_api_runs_on_postgres(pg_url: str, tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, db_url=pg_url))
    with TestClient(app) as client:
        login = {"name": "pg-admin", "password": "password-1"}
        assert client.post("/api/v1/auth/login", json=login).status_code == 200
        assert client.get("/api/v1/vms").status_code == 200
        assert client.get("/api/v1/audit").json()[0]["action"] == "auth.login"
