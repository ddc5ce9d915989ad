"""QA of the CLI as a first-time user meets it: commands as scripts and the README call them,
bad input answered with one clear line and exit status 1, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmgr.cli.common import state
from kvmgr.cli.main import app


@pytest.fixture(autouse=True)
def _fresh_cli_connection() -> Iterator[None]:
    # CliRunner runs in this process: drop the CLI's cached connection between tests
    yield
    state.close()


def _kvmgr(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    # CliRunner catches what would be a traceback: anything but an exit is a crash
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, " ".join(result.output.split())  # Rich wraps long lines


def test_image_build_demo_iso_is_the_command_scripts_demo_sh_runs() -> None:
    # scripts/demo.sh (make demo) runs 'kvmgr image build-demo-iso PATH'; a one-command Typer
    # app collapses into 'kvmgr image PATH' and refused that with a usage error
    code, output = _kvmgr("image", "build-demo-iso", "/proc/t-qa-missing/demo.iso")
    assert "unexpected extra argument" not in output
    assert code == 1, output
    assert "does not exist" in output


def test_image_into_an_unwritable_place_is_a_clean_error() -> None:
    code, output = _kvmgr("image", "build-demo-iso", "/proc/t-qa-demo.iso")
    assert code == 1, output
    assert "Traceback" not in output and "error:" in output, output


def test_serve_with_a_missing_tls_certificate_is_a_clean_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    code, output = _kvmgr(
        "-c", "test:///default", "serve", "--listen", "127.0.0.1:1",
        "--tls-cert", missing, "--tls-key", missing,
    )  # fmt: skip
    assert code == 1, output
    assert "missing.pem" in output, output


def test_serve_with_a_certificate_that_is_not_pem_is_a_clean_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    code, output = _kvmgr(
        "-c", "test:///default", "serve", "--listen", "127.0.0.1:1",
        "--tls-cert", str(junk), "--tls-key", str(junk),
    )  # fmt: skip
    assert code == 1, output
    assert "TLS" in output, output


def test_clone_table_shows_seconds_rounded_like_vm_create() -> None:
    uri = ("-c", "test:///default")
    code, output = _kvmgr(*uri, "vm", "create", "t-qa-src", "--disk", "none", "--no-start")
    assert code == 0, output
    try:
        code, output = _kvmgr(*uri, "vm", "clone", "t-qa-src", "t-qa-copy")
        assert code == 0, output
        seconds = output.split("seconds ")[1].split()[0]
        assert len(seconds.partition(".")[2]) <= 2, output  # not 0.02739870199957295
    finally:
        for name in ("t-qa-copy", "t-qa-src"):
            _kvmgr(*uri, "vm", "delete", name, "--force")


@pytest.mark.parametrize("editor", ["false", "/nonexistent/t-qa-editor"])
def test_vm_edit_with_a_failing_editor_is_a_clean_error(
    editor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDITOR", editor)
    monkeypatch.delenv("VISUAL", raising=False)
    code, output = _kvmgr("-c", "test:///default", "vm", "edit", "test")
    assert code == 1, output
    assert "editor" in output and editor in output, output


def test_vm_console_of_a_missing_vm_says_so_like_every_other_command() -> None:
    # a real process: the console wants a terminal's file descriptors, which CliRunner lacks
    argv = ["-c", "test:///default", "vm", "console", "t-qa-nope"]
    done = subprocess.run(
        [sys.executable, "-m", "kvmgr.cli.main", *argv],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip
    output = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in output, output
    assert "VM 't-qa-nope' does not exist" in output, output
