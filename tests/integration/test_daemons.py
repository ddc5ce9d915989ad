"""``kvmgr host daemons`` against the real daemon: start is a no-op while libvirtd answers."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kvmgr.cli.main import app
from kvmgr.host import daemons


def _libvirtd_pids() -> set[tuple[int, int]]:
    return {(d.pid, d.start_time) for d in daemons.running_daemons() if d.name == "libvirtd"}


def test_start_leaves_an_answering_daemon_alone() -> None:
    before = _libvirtd_pids()
    assert before, "the integration tests need a running libvirtd"

    report = daemons.start()

    assert report.did_nothing
    assert report.version.startswith("9.")
    assert _libvirtd_pids() == before


def test_status_reports_the_running_libvirtd_and_its_namespace() -> None:
    result = CliRunner().invoke(app, ["host", "daemons", "status", "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["answers"] is True
    libvirtd = [d for d in data["daemons"] if d["name"] == "libvirtd"]
    assert libvirtd
    assert {d["pid"] for d in libvirtd} == {pid for pid, _ in _libvirtd_pids()}


def test_cli_start_says_so_and_changes_nothing() -> None:
    before = _libvirtd_pids()
    result = CliRunner().invoke(app, ["host", "daemons", "start"])
    assert result.exit_code == 0, result.output
    assert "already answers" in result.output
    assert _libvirtd_pids() == before


def test_stop_never_touches_a_daemon_kvmgr_did_not_start() -> None:
    if any(r.name == "libvirtd" for r in daemons.load_records()):
        return  # kvmgr started this daemon (e.g. by make test); stopping it would break the run
    before = _libvirtd_pids()
    daemons.stop()
    assert _libvirtd_pids() == before
