"""The store on a real PostgreSQL server: users, tokens, sessions, audit, tasks, ownership.

The fixture starts a throw-away cluster (initdb + pg_ctl as the 'postgres' user) in a temp dir on
a loopback port and removes it afterwards.  It skips, saying why, only when PostgreSQL is not
installed (scripts/install-test-deps.sh installs it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
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

pytestmark = pytest.mark.postgres
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 is not installed: run scripts/install-test-deps.sh")
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no 'postgres' user to run the server as (install the postgresql package)")
    root = Path(tempfile.mkdtemp(prefix="kvmgr-pg-"))
    os.chown(root, account.pw_uid, account.pw_gid)
    data, port = root / "data", _free_port()

    def as_postgres(*argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=60
        )

    try:
        as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
        # -l: the server's output goes to a file, not to the pipe run() waits on.
        log = str(root / "server.log")
        as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", log, "-o", options, "-w", "start"
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


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
