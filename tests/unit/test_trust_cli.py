"""Issue 11 hole 1 on the CLI: the same kvmgr.control.authz checks as the API (test driver)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmgr.cli.main import app

URI = "test:///default"


@pytest.fixture(autouse=True)
def private_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMGR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KVMGR_DB_URL", f"sqlite:///{tmp_path / 'kvmgr.db'}")


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["-c", URI, *args])
    return result.exit_code, result.output


def test_cli_refuses_system_files_as_disks_even_through_a_symlink(tmp_path: Path) -> None:
    link = tmp_path / "disk.img"
    link.symlink_to("/etc/shadow")
    for disk in ("/etc/shadow", str(link), f"{tmp_path}/../../../../etc/shadow"):
        code, output = _run("vm", "create", "t-cli-trust", "--disk", f"path={disk}",
                            "--network", "none", "--no-start", "--graphics", "none")  # fmt: skip
        assert code == 1, output
        assert "system directory /etc" in output
    code, output = _run("vm", "list")
    assert "t-cli-trust" not in output


def test_cli_refuses_pools_on_system_directories(tmp_path: Path) -> None:
    link = tmp_path / "etc-link"
    link.symlink_to("/etc")
    for path in ("/etc", "/", str(link), "/var/lib/kvmgr"):
        code, output = _run("pool", "create", "t-cli-trust-p", "--path", path)
        assert code == 1, (path, output)
        assert "system directory" in output


def test_cli_refuses_to_import_a_system_file_as_an_iso(tmp_path: Path) -> None:
    link = tmp_path / "setup.iso"
    link.symlink_to("/etc/passwd")
    for path in ("/etc/passwd", str(link)):
        code, output = _run("iso", "import", path, "--name", "t-cli-trust-iso")
        assert code == 1, (path, output)
        assert "system directory /etc" in output


def test_cli_relative_paths_are_resolved_and_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shadow.iso").symlink_to("/etc/shadow")
    (tmp_path / "disk.img").symlink_to("/etc/shadow")
    monkeypatch.chdir(tmp_path)
    for option in (["--iso", "shadow.iso", "--disk", "none"], ["--disk", "path=disk.img"]):
        code, output = _run("vm", "create", "t-cli-trust", *option, "--network", "none",
                            "--no-start", "--graphics", "none")  # fmt: skip
        assert code == 1, (option, output)
        assert "system directory /etc" in output, option
