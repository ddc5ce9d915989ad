"""kill -9 of ``kvmgr serve`` while its worker runs a VM create task (real daemon): the process
dies at each journal record in turn (``KVMGR_TEST_CRASH_AFTER``), then ``kvmgr ops recover``
from another process leaves no domain and no volume of the create behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kvmgr.connect import Connection
from kvmgr.services.steps import CRASH_ENV
from kvmgr.store import users
from kvmgr.store.db import Store
from kvmgr.store.models import Role
from tests.steps_harness import libvirt_state

from .conftest import Cleanup

PREFIX = "t-k9s-"
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def state_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """A private state dir (SQLite inside) with an admin token, and the env to run kvmgr in."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "KVMGR_STATE_DIR": str(tmp_path / "state"),
        "KVMGR_SECRET_KEY": "k" * 40,
        "KVMGR_STATS_INTERVAL": "0",
        "KVMGR_EVENTS": "false",
    }
    for name in ("KVMGR_DB_URL", "KVMGR_DATABASE_URL", CRASH_ENV):
        env.pop(name, None)
    store = Store(f"sqlite:///{tmp_path / 'state' / 'db' / 'kvmgr.db'}")
    try:
        with store.session() as session:
            users.create_user(session, "t-k9s-admin", "password-1234", Role.admin, None)
            token = users.create_token(session, "t-k9s-admin", "kill9")
    finally:
        store.dispose()
    yield env, token


# records of the create: the volume's undo, the definition's undo
CRASHES = ["1", "2", "2+"]


@pytest.mark.parametrize("crash", CRASHES)
def test_serve_killed_during_a_create_task_recovers_to_nothing(
    conn: Connection,
    cleanup: Cleanup,
    state_env: tuple[dict[str, str], str],
    tmp_path: Path,
    crash: str,
) -> None:
    cleanup.prefix(PREFIX)
    env, token = state_env
    before = libvirt_state(conn, PREFIX)
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    argv = [sys.executable, "-m", "kvmgr.cli.main", "-c", "qemu:///system", "serve"]
    server = subprocess.Popen(
        [*argv, "--listen", f"127.0.0.1:{port}"],
        env={**env, CRASH_ENV: crash},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/api/v1/auth/me").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "serve did not start"
            time.sleep(0.5)
        body = {
            "name": f"{PREFIX}vm",
            "memory": "128M",
            "vcpus": 1,
            "disks": ["16M"],
            "networks": [],
            "graphics": "none",
            "start": False,
        }
        answer = client.post("/api/v1/vms", json=body)
        assert answer.status_code == 202, answer.text
        assert server.wait(120) == -signal.SIGKILL  # died inside the task, at the hook
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
    recovered = subprocess.run(
        [sys.executable, "-m", "kvmgr.cli.main", "-c", "qemu:///system", "ops", "recover"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert recovered.returncode == 0, recovered.stderr
    assert "undone: create" in recovered.stdout, recovered.stdout
    assert libvirt_state(conn, PREFIX) == before  # no domain, no volume of the create
