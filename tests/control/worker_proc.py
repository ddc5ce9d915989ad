"""A worker process for the queue tests: the real :class:`Worker` plus two test kinds that leave
a trace outside the database (so a task run twice would show, whatever the rows say).

    python -m tests.control.worker_proc DB_URL THREADS [LIBVIRT_URI]

With a libvirt URI, every task's host is that daemon.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvmgr.connect import Connection, open_connection
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


@task_kind("test.journaled")
def _journaled(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    """Makes a volume under a journaled operation (its undo recorded first), then hangs: the
    test kills the worker there, and recovery must delete the volume."""
    pool, name = str(params["pool"]), str(params["name"])
    with ctx.plane.operation("test.journaled", name, ctx.host) as steps:
        steps.undo_with("volume.delete", pool=pool, name=name)
        xml = (
            f"<volume><name>{name}</name><capacity unit='M'>1</capacity>"
            "<target><format type='raw'/></target></volume>"
        )
        ctx.conn().virconn.storagePoolLookupByName(pool).createXML(xml, 0)
        Path(params["started"]).write_text(ctx.worker)
        time.sleep(float(params["seconds"]))
    return {}


def _no_host(host: str) -> Any:
    raise NotFound(f"test workers have no host ({host})")


def _host_of(uri: str) -> Callable[[str], Connection]:
    conn = open_connection(uri)
    return lambda _host: conn


def main() -> None:
    url, threads = sys.argv[1], int(sys.argv[2])
    connect = _host_of(sys.argv[3]) if len(sys.argv) > 3 else _no_host
    store = Store(url)
    worker = Worker(store, connect, concurrency=threads, poll=0.02, beat=0.5)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    worker.start()
    print(worker.id, flush=True)
    stop.wait()
    worker.stop(grace=10)
    store.dispose()


if __name__ == "__main__":
    main()
