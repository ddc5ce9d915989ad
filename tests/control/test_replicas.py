"""Two ``kvmgr serve`` replicas (real processes, each with its worker) on one throw-away
PostgreSQL: 100 concurrent VM creations, submitted to both, each run exactly once.

The replicas manage libvirt's test driver (``test:///default``), whose state lives in each
process: a VM exists in the replica whose worker ran its task.  So a task run twice would show as
a VM in both replicas (or a failed second run in one); exactly once is every name in exactly one
replica, every task ``done`` after one attempt.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from kvmgr.store import users
from kvmgr.store.db import Store
from kvmgr.store.models import Role
from tests.api.test_postgres import pg_url
from tests.control.conftest import REPO, wait_for

__all__ = ["pg_url"]  # the module-scoped PostgreSQL fixture, reused
pytestmark = pytest.mark.postgres
TASKS = 100
LOGS = Path()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def admin_token(pg_url: str) -> str:
    store = Store(pg_url)
    try:
        with store.session() as session:
            users.create_user(session, "t-rep-admin", "password-1234", Role.admin, None)
            return users.create_token(session, "t-rep-admin", "replicas")
    finally:
        store.dispose()


@pytest.fixture
def replicas(pg_url: str, admin_token: str, tmp_path: Path) -> Iterator[list[httpx.Client]]:
    global LOGS  # noqa: PLW0603 - where _log_tails reads the replicas' output
    LOGS = tmp_path
    procs, clients = [], []
    try:
        for number in range(2):
            port = _free_port()
            env = {
                **os.environ,
                "PYTHONPATH": f"{REPO / 'src'}",
                # The fleet's spelling; KVMGR_DB_URL is the older one (both are read).
                "KVMGR_DATABASE_URL": pg_url,
                "KVMGR_STATE_DIR": str(tmp_path / f"state{number}"),
                "KVMGR_SECRET_KEY": "s" * 40,
                "KVMGR_STATS_INTERVAL": "0",
                "KVMGR_EVENTS": "false",
            }
            env.pop("KVMGR_DB_URL", None)
            argv = [sys.executable, "-m", "kvmgr.cli.main", "-c", "test:///default", "serve"]
            log = (tmp_path / f"serve{number}.log").open("w")
            procs.append(
                subprocess.Popen(
                    [*argv, "--listen", f"127.0.0.1:{port}"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            clients.append(
                httpx.Client(
                    base_url=f"http://127.0.0.1:{port}",
                    headers={"Authorization": f"Bearer {admin_token}"},
                    timeout=60,
                )
            )
        for client in clients:
            wait_for(lambda c=client: _up(c), 60, f"{client.base_url} to serve")
        yield clients
    finally:
        for client in clients:
            client.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _log_tails() -> str:
    logs = sorted(LOGS.glob("serve*.log"))
    texts = [path.read_text() for path in logs]
    # The first traceback says why a request failed; the access log lines after it do not.
    return "\n".join(text[text.find("Traceback") :][:6000] for text in texts if "Traceback" in text)


def _up(client: httpx.Client) -> bool:
    try:
        return client.get("/api/v1/auth/me").status_code == 200
    except httpx.TransportError:
        return False


def test_two_replicas_run_100_concurrent_submissions_exactly_once(
    replicas: list[httpx.Client],
) -> None:
    names = [f"t-rep-{n:03d}" for n in range(TASKS)]

    def submit(number: int) -> str:
        body = {
            "name": names[number],
            "memory": "64M",
            "vcpus": 1,
            "graphics": "none",
            "disks": ["16M"],
            "networks": [],
            "start": False,
        }
        answer = replicas[number % 2].post("/api/v1/vms", json=body)
        assert answer.status_code == 202, (answer.text, _log_tails())
        return str(answer.json()["id"])

    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = list(pool.map(submit, range(TASKS)))

    def finished() -> list[dict[str, object]]:
        rows = replicas[0].get("/api/v1/tasks", params={"limit": 500}).json()
        return [
            row for row in rows if row["id"] in ids and row["state"] not in ("queued", "running")
        ]

    wait_for(lambda: len(finished()) == TASKS, 300, "100 tasks to end")
    ended = finished()
    assert Counter(row["state"] for row in ended) == {"done": TASKS}, [
        row["error"] for row in ended if row["state"] != "done"
    ][:3]
    assert {row["attempts"] for row in ended} == {1}
    workers = Counter(str(row["worker"]).split(":")[1] for row in ended)  # by pid
    assert len(workers) == 2, workers  # both replicas' workers took part

    seen: Counter[str] = Counter()
    for client in replicas:
        listed = {row["name"] for row in client.get("/api/v1/vms").json()}
        seen.update(listed & set(names))
    assert set(seen) == set(names) and max(seen.values()) == 1  # each VM made exactly once
    # The audit log (shared) has one outcome row per task.
    audit = replicas[1].get("/api/v1/audit", params={"limit": 1000}).json()
    made = Counter(
        row["target"] for row in audit if row["action"] == "vm.create" and row["target"] in names
    )
    assert set(made) == set(names) and max(made.values()) == 1
