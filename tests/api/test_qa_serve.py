"""QA of ``kvmgr serve``: its help shows what it takes, and a public address needs TLS."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmgr.cli.main import app


def test_serve_help_shows_no_subcommands_and_no_completion_options() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "Usage: kvmgr serve [OPTIONS]" in result.output
    # serve has no subcommands, and shell completion belongs to 'kvmgr' itself.
    assert "COMMAND" not in result.output
    assert "completion" not in result.output
    assert "--listen" in result.output and "--insecure" in result.output


def test_serve_refuses_a_public_address_without_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVMGR_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["serve", "--listen", "0.0.0.0:8443"])
    assert result.exit_code != 0
    assert "TLS" in result.output or "--insecure" in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_an_extra_argument() -> None:
    result = CliRunner().invoke(app, ["serve", "now"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_user_help_has_no_completion_options_of_its_own() -> None:
    result = CliRunner().invoke(app, ["user", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "completion" not in result.output


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "kvmgr.cli.main", "serve", "--listen", f"127.0.0.1:{port}"],
            env={**os.environ, "KVMGR_STATE_DIR": str(tmp_path), "KVMGR_URI": "test:///default"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == (
        f"error: cannot serve on 127.0.0.1:{port}: the port is in use (another kvmgr serve?)"
    )
    assert "Traceback" not in done.stderr
