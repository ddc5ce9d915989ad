"""``kvmgr iso detect``: the command people use before importing (needs no daemon)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pycdlib
import pytest
from typer.testing import CliRunner

from kvmgr.cli.main import app

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/osinfo/os").is_dir(), reason="osinfo-db is not installed"
)


def _iso(path: Path, volume_id: str) -> Path:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=volume_id, sys_ident="LINUX")
    iso.add_fp(io.BytesIO(b"x" * 100), 100, "/X.TXT;1")
    iso.write(str(path))
    iso.close()
    return path


def test_detect_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["iso", "detect", str(_iso(tmp_path / "r.iso", "Rocky-9-3-x86_64-dvd")), "-o", "json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["os_id"] == "rocky9" and data["matched"] is True
    assert data["memory"] == 1536 * 1024**2 and data["vcpus"] == 2


def test_detect_unknown_media_table(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["iso", "detect", str(_iso(tmp_path / "u.iso", "NOPE_123"))])
    assert result.exit_code == 0, result.output
    assert "unknown media: generic profile" in result.stdout
    assert "generic" in result.stdout


def test_detect_not_an_iso_is_a_clean_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.iso"
    junk.write_bytes(b"\0" * 70000)
    result = CliRunner().invoke(app, ["iso", "detect", str(junk)])
    assert result.exit_code == 1
    assert "not an ISO image" in result.output
    assert "Traceback" not in result.output
