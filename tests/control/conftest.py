"""Fixtures of the task queue tests: a store with users, and worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmgr.store import users
from kvmgr.store.db import Store
from kvmgr.store.models import Role
from kvmgr.store.users import Principal

REPO = Path(__file__).resolve().parents[2]
PEOPLE = {
    "boss": (Role.admin, None),
    "ann": (Role.operator, "team"),
    "bob": (Role.operator, "team"),
}


def principals(store: Store) -> dict[str, Principal]:
    with store.session() as session:
        for name, (role, group) in PEOPLE.items():
            if session.query(users.User).filter_by(name=name).first() is None:
                users.create_user(session, name, "password-1234", role, group)
        found = {name: users.authenticate(session, name, "password-1234") for name in PEOPLE}
    return {name: who for name, who in found.items() if who is not None}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'kvmgr.db'}")
    yield opened
    opened.dispose()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class WorkerProcesses:
    """``python -m tests.control.worker_proc`` processes, stopped (or killed) at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self, url: str, threads: int = 2, uri: str | None = None
    ) -> tuple[subprocess.Popen[str], str]:
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
        argv = [sys.executable, "-m", "tests.control.worker_proc", url, str(threads)]
        proc = subprocess.Popen(
            [*argv, *([uri] if uri else [])],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        worker_id = proc.stdout.readline().strip()  # printed once the worker runs
        assert worker_id, "the worker process did not start"
        return proc, worker_id

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def worker_procs() -> Iterator[WorkerProcesses]:
    procs = WorkerProcesses()
    yield procs
    procs.stop_all()
