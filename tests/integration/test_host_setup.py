"""``kvmgr host setup`` for real on this Debian 12 host: idempotent, leaves the daemon alone."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kvmgr.cli.main import app
from kvmgr.host import daemons

pytestmark = pytest.mark.integration


def _libvirtd() -> set[tuple[int, int]]:
    return {(d.pid, d.start_time) for d in daemons.running_daemons() if d.name == "libvirtd"}


def _setup(*extra: str) -> dict[str, object]:
    result = CliRunner().invoke(app, ["host", "setup", *extra, "-o", "json"])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.output)
    return data


def test_setup_runs_and_is_a_no_op_the_second_time() -> None:
    daemon_before = _libvirtd()
    first = _setup()
    assert first["family"] == "debian"
    second = _setup()
    assert second["steps"] == [], "a second setup must find nothing left to do"
    assert _setup("--dry-run")["steps"] == []
    assert _libvirtd() == daemon_before, "setup must not restart a daemon that answers"
