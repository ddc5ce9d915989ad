"""``kvmgr worker``: run queued tasks (submitted by any API replica) until stopped.

Several workers may run against one database (PostgreSQL for a fleet; SQLite on one machine):
each task runs exactly once.  SIGTERM or Ctrl-C stops claiming and lets running tasks finish
within ``--grace`` seconds; what is still running then is recovered by the next worker.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Annotated

import typer

from kvmgr.cli.common import err_console, report_errors

app = typer.Typer(add_completion=False)


@app.command()
@report_errors
def worker(
    threads: Annotated[int, typer.Option(min=1, max=64, help="tasks run at once")] = 2,
    poll: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="seconds between looks when idle (PostgreSQL: a notify wakes the worker at "
            "once, and while it listens it looks at least every 5 s)",
        ),
    ] = 0.5,
    grace: Annotated[
        float, typer.Option(min=0, help="seconds to let running tasks finish on SIGTERM")
    ] = 30.0,
    events: Annotated[
        bool,
        typer.Option(
            "--events/--no-events",
            help="also watch registered hosts' lifecycle events (one worker per host, by lease)",
        ),
    ] = True,
) -> None:
    """Run tasks from the database queue (KVMGR_DATABASE_URL / KVMGR_DB_URL) until stopped."""
    from kvmgr.api.settings import Settings
    from kvmgr.control.hosts import HostRegistry, close_connections
    from kvmgr.control.worker import Worker, registered_hosts
    from kvmgr.store.db import Store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings()
    store = Store(settings.database_url)
    # Tasks name their host; the registry knows its URI (the API registered it on first use).
    registry = HostRegistry(store)
    runner = Worker(
        store,
        registry.connect,
        concurrency=threads,
        poll=poll,
        state_dir=settings.state_dir,
        host_events=registered_hosts(store) if events else None,
    )
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        err_console.print(f"{signal.Signals(signum).name}: finishing running tasks")
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    runner.start()
    # Plain, one line: scripts (and bench/tasks.py) wait for it to know the worker is up.
    typer.echo(f"worker {runner.id} running ({threads} threads)", err=True)
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        clean = runner.stop(grace=grace)
        close_connections()
        store.dispose()
    if not clean:
        raise typer.Exit(1)
