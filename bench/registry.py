"""The benchmarks in the order they run: cheap, in-process ones first, guest boots last."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from bench import (
    api,
    backup,
    boot,
    cli_startup,
    clone,
    control,
    fleet,
    installs,
    inventory,
    migrate,
    provision,
    snapshot,
    tasks,
    vmstats,
)
from bench.core import Context, Line

Benchmark = Callable[[Context], Iterator[Line]]

BENCHMARKS: list[tuple[str, Benchmark]] = [
    ("inventory", inventory.run),
    ("fleet", fleet.run),
    ("stats", vmstats.run),
    ("rest", api.run_rest),
    ("cli-startup", cli_startup.run),
    ("tasks", tasks.run),
    ("provision", provision.run),
    ("snapshot", snapshot.run),
    ("control", control.run),
    ("events", api.run_events),
    ("clone", clone.run),
    ("backup", backup.run),
    ("installs", installs.run),
    ("boot", boot.run),
    ("migrate", migrate.run),
]
