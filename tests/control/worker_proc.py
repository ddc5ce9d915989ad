"""A worker process for the queue tests: the real :class:`Worker` plus two test kinds that leave
a trace outside the database (so a task run twice would show, whatever the rows say).

    python -m tests.control.worker_proc DB_URL THREADS
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kvmgr.control.tasks import TaskContext, task_kind
from kvmgr.control.worker import Worker
from kvmgr.errors import NotFound
from kvmgr.store.db import Store


@task_kind("test.append")
def _append(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    # One write of a short line with O_APPEND: lines of concurrent writers never interleave.
    fd = os.open(params["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{ctx.task_id} {ctx.worker}\n".encode())
    finally:
        os.close(fd)
    return {"worker": ctx.worker}


@task_kind("test.sleep")
def _sleep(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    Path(params["started"]).write_text(ctx.worker)
    time.sleep(float(params["seconds"]))
    return {}


def _no_host(host: str) -> Any:
    raise NotFound(f"test workers have no host ({host})")


def main() -> None:
    url, threads = sys.argv[1], int(sys.argv[2])
    store = Store(url)
    worker = Worker(store, _no_host, concurrency=threads, poll=0.02, beat=0.5)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    worker.start()
    print(worker.id, flush=True)
    stop.wait()
    worker.stop(grace=10)
    store.dispose()


if __name__ == "__main__":
    main()
