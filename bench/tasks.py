"""Issue 12: task throughput -- 1,000 no-op tasks through 1 and 4 ``kvmgr worker`` processes on
PostgreSQL (a throw-away cluster made here), and on SQLite for reference.

Each worker process runs one task at a time (``--threads 1``) and looks for work every 50 ms when
idle.  The workers are started and idle first; then the tasks are queued in one transaction and
the clock runs from that commit until the last task is ``done``.  The figure is tasks/s; the
"ratio" column is 4 workers over 1 (the queue's scaling on this machine's cores).

Latency: one idle ``kvmgr worker`` of another process with its default poll (as deployed); one
task at a time is queued at a random moment and the figure is the time from its submission to
its claim (the row's ``started`` minus ``created``), in ms.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator

from tests.pgcluster import PostgresMissing, throwaway_postgres

from bench.core import REPO, BenchError, Context, Line, Result, Skip

TASKS = 1000


def run(ctx: Context) -> Iterator[Line]:
    tasks = 200 if ctx.quick else TASKS
    reps = ctx.reps(1, 3)
    with contextlib.ExitStack() as stack:
        urls: list[tuple[str, str]] = []
        try:
            urls.append(("PostgreSQL", stack.enter_context(_postgres())))
        except BenchError as err:
            yield Skip("tasks", f"PostgreSQL: {err}")
        urls.append(("SQLite", f"sqlite:///{ctx.workdir / 'tasks.db'}"))
        for label, url in urls:
            figures: dict[int, list[float]] = {1: [], 4: []}
            for _rep in range(reps):
                for workers in (1, 4):
                    ctx.say(f"tasks: {tasks} no-op tasks, {workers} worker(s), {label}")
                    figures[workers].append(_throughput(ctx, url, workers, tasks))
            ctx.say(f"tasks: submit-to-claim latency, 1 idle worker, default poll, {label}")
            yield Result(
                "tasks",
                f"submit to claim, idle worker, {label}",
                "ms",
                "1 worker",
                _latency(ctx, url, 10 if ctx.quick else 30),
                note="one task at a time, at a random moment; lower is better",
            )
            yield Result(
                "tasks",
                f"{tasks} no-op tasks, {label}",
                "tasks/s",
                "4 workers",
                figures[4],
                "1 worker",
                figures[1],
                note="ratio: 4 workers / 1; higher is better",
            )


def _throughput(ctx: Context, url: str, workers: int, count: int) -> float:
    from kvmgr.control import tasks
    from kvmgr.store import users
    from kvmgr.store.db import Store
    from kvmgr.store.models import Role, Task

    store = Store(url)
    try:
        with store.session() as session:
            session.query(Task).delete()
            if session.query(users.User).filter_by(name="bench").first() is None:
                users.create_user(session, "bench", "bench-password", Role.admin, None)
            owner = users.authenticate(session, "bench", "bench-password")
        assert owner is not None
        procs = [_worker(ctx, url) for _ in range(workers)]
        try:
            began = time.perf_counter()
            ids = tasks.submit_many(store, "noop", [{}] * count, owner=owner, target="bench")
            while True:
                with store.session() as session:
                    done = session.query(Task).filter(Task.state == "done").count()
                if done >= len(ids):
                    break
                if time.perf_counter() - began > 600:
                    raise BenchError(f"only {done} of {count} tasks done after 600 s")
                time.sleep(0.02)
            elapsed = time.perf_counter() - began
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(60)
        return count / elapsed
    finally:
        store.dispose()


def _latency(ctx: Context, url: str, samples: int) -> list[float]:
    from kvmgr.control import tasks
    from kvmgr.store import users
    from kvmgr.store.db import Store
    from kvmgr.store.models import Task, aware

    store = Store(url)
    proc = _worker(ctx, url, poll=None)
    try:
        with store.session() as session:
            owner = users.authenticate(session, "bench", "bench-password")
        assert owner is not None
        figures = []
        for _ in range(samples):
            time.sleep(random.uniform(0.1, 1.0))  # any moment of the worker's idle wait
            task_id = tasks.submit(store, "noop", {}, owner=owner, target="bench")["id"]
            deadline = time.monotonic() + 60
            while True:
                with store.session() as session:
                    row = session.get(Task, task_id)
                    assert row is not None
                    if row.state == "done" and row.started is not None:
                        waited = aware(row.started) - aware(row.created)
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"task {task_id} not done after 60 s")
                time.sleep(0.01)
            figures.append(waited.total_seconds() * 1000)
        return figures
    finally:
        proc.terminate()
        proc.wait(60)
        store.dispose()


def _worker(ctx: Context, url: str, poll: float | None = 0.05) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "KVMGR_DATABASE_URL": url,
        "KVMGR_STATE_DIR": str(ctx.workdir / "state"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO / "src")),
    }
    env.pop("KVMGR_DB_URL", None)
    argv = [
        sys.executable,
        "-m",
        "kvmgr.cli.main",
        "worker",
        "--threads",
        "1",
        *(["--poll", str(poll)] if poll is not None else []),
        "--no-events",
    ]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # idle and polling once it says so
        line = proc.stderr.readline()
        if not line:
            raise BenchError(f"kvmgr worker exited with {proc.wait()}")
        if "running" in line and line.startswith("worker "):
            return proc
    proc.kill()
    raise BenchError("kvmgr worker did not start within 60 s")


@contextlib.contextmanager
def _postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a loopback port (the test suite's own helper)."""
    try:
        with throwaway_postgres(prefix="kvmgr-bench-pg-") as url:
            yield url
    except PostgresMissing as missing:
        raise BenchError(str(missing)) from missing
