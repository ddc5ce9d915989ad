"""Recovery across real processes (SQLite, libvirt's test driver): an operation whose process is
killed with SIGKILL after its journal record is undone by the next process, exactly once even
when two processes recover at the same moment, and never while its owner still lives."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.control.plane import ControlPlane
from kvmgr.services.steps import recovery_action
from kvmgr.store.db import Store

FORK = multiprocessing.get_context("fork")
KEY = "vm:local/0000-recovery-test"


@recovery_action("test.core.append")
def _append(_conn: Connection, args: dict[str, Any]) -> None:
    """Idempotent like a real action: appends its line once per run to the file named."""
    with Path(args["path"]).open("a") as out:
        out.write(f"{args['what']} by {os.getpid()}\n")


def _plane(url: str, actor: str) -> ControlPlane:
    conn = open_connection("test:///default")
    return ControlPlane(Store(url), actor, lambda _host: conn)


def _crash_midway(url: str, notes: str, ready: Any, host: str) -> None:
    plane = _plane(url, "cli:victim")
    with plane.operation("create", "web1", host, keys=[KEY]) as steps:
        steps.undo_with("test.core.append", path=notes, what="delete volume web1.qcow2")
        steps.undo_with("test.core.append", path=notes, what="undefine web1")
        ready.set()
        time.sleep(600)  # killed here, after the records, before the operation ends


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'kvmgr.db'}"
    Store(url).dispose()  # migrated before any fork
    yield url


def _killed_victim(url: str, notes: Path, host: str = "local") -> None:
    ready = FORK.Event()
    victim = FORK.Process(target=_crash_midway, args=(url, str(notes), ready, host))
    victim.start()
    assert ready.wait(30)
    plane = _plane(url, "cli:observer")
    assert plane.recover() == []  # its owner lives: left alone
    assert plane.busy(KEY) is not None
    [running] = plane.operations()
    assert (running.state, running.actor) == ("running", "cli:victim")
    os.kill(victim.pid or 0, signal.SIGKILL)
    victim.join(10)
    plane.store.dispose()


def test_operation_of_a_killed_process_is_undone_by_the_next(url: str, tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    _killed_victim(url, notes)
    assert not notes.exists()  # nothing undone yet
    plane = _plane(url, "cli:next")
    [outcome] = plane.recover()
    assert (outcome.state, outcome.kind, outcome.target) == ("undone", "create", "web1")
    assert "undid: test.core.append" in outcome.message
    me = os.getpid()
    assert notes.read_text().splitlines() == [
        f"undefine web1 by {me}",
        f"delete volume web1.qcow2 by {me}",
    ]
    [op] = plane.operations()
    assert op.state == "undone" and op.finished is not None
    assert plane.busy(KEY) is None
    assert plane.recover() == []  # idempotent
    assert len(notes.read_text().splitlines()) == 2


def _recover_at(url: str, start: float, out: str) -> None:
    time.sleep(max(0.0, start - time.time()))
    outcomes = _plane(url, f"cli:{os.getpid()}").recover()
    Path(out).write_text(",".join(o.state for o in outcomes))


def test_two_processes_recovering_at_once_undo_once(url: str, tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    _killed_victim(url, notes)
    start = time.time() + 1.5
    racers = [
        FORK.Process(target=_recover_at, args=(url, start, str(tmp_path / f"r{i}")))
        for i in range(2)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
        assert racer.exitcode == 0
    results = sorted((tmp_path / f"r{i}").read_text() for i in range(2))
    assert results == ["", "undone"]
    lines = notes.read_text().splitlines()
    assert len(lines) == 2 and len({line.split(" by ")[1] for line in lines}) == 1


def test_ops_commands_list_and_recover(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from kvmgr.cli.common import state
    from kvmgr.cli.main import app
    from kvmgr.control.hosts import HostRegistry

    notes = tmp_path / "notes"
    plane = _plane(url, "cli:done")
    host = HostRegistry(plane.store).ensure_uri("test:///default").name  # as the CLI names it
    _killed_victim(url, notes, host)
    with plane.operation("start", "web2", host):
        pass
    monkeypatch.setenv("KVMGR_DB_URL", url)
    try:
        runner = CliRunner()
        # Any command's open of the plane recovers first, and says so.
        listed = runner.invoke(app, ["--connect", "test:///default", "ops", "list"])
        assert listed.exit_code == 0, listed.output
        assert f"recovered: create web1 on {host}" in listed.output
        assert "undone" in listed.output and "web1" in listed.output
        assert "web2" not in listed.output  # done: shown with --all only
        assert len(notes.read_text().splitlines()) == 2
        again = runner.invoke(app, ["--connect", "test:///default", "ops", "recover"])
        assert again.exit_code == 0, again.output
        assert again.output.strip() == "nothing to recover"
        every = runner.invoke(app, ["--connect", "test:///default", "ops", "list", "--all"])
        assert "web2" in every.output and "done" in every.output
    finally:
        state.close()


def test_the_message_names_each_action_with_its_short_arguments() -> None:
    from kvmgr.control.recovery import describe
    from kvmgr.services.steps import Record

    finish = [
        Record("vm.delete", {"uuid": "5a1c", "keep_disks": False, "volumes": ["/a", "/b"]}),
        Record("network.finish_delete", {"name": "lan", "xml": "<network>" + "x" * 200}),
        Record("pool.finish_delete", {"name": "p", "volumes": [f"v{i}" for i in range(9)]}),
    ]
    words = describe([], finish)
    assert words.startswith("finished: vm.delete uuid=5a1c keep_disks=False volumes=/a,/b; ")
    assert "network.finish_delete name=lan xml=<network>xxx" in words and "x" * 100 not in words
    assert words.endswith("pool.finish_delete name=p volumes=9 items")
    undo = [Record("volume.delete", {"pool": "default", "name": "w.qcow2"}), Record("a", {})]
    assert describe(undo, []) == "undid: a; volume.delete pool=default name=w.qcow2"
