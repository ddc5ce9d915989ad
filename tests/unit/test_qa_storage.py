"""QA of ``kvmgr vol``/``pool`` with bad local paths and sizes: one clear line, no traceback.

Runs the real CLI against libvirt's test driver; each invocation is its own test host.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmgr.cli.main import app
from kvmgr.connect import Connection, open_connection
from kvmgr.errors import InvalidInput
from kvmgr.services import storage
from kvmgr.units import parse_size

TEST_URI = "test:///default"


def _kvmgr(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["-c", TEST_URI, *args])
    return result.exit_code, result.output


def _assert_clean_error(code: int, output: str, *expected: str) -> None:
    assert code == 1, output
    assert "Traceback" not in output, output
    for text in expected:
        assert text in " ".join(output.split()), output  # Rich wraps long lines


def test_upload_of_a_directory_is_refused_before_any_volume_is_made(tmp_path: Path) -> None:
    code, output = _kvmgr("vol", "upload", "default-pool", "t-qa-dir", str(tmp_path))
    _assert_clean_error(code, output, "is a directory")


@pytest.fixture
def conn() -> Iterator[Connection]:
    with open_connection(TEST_URI) as connection:
        yield connection


@pytest.fixture
def volume(conn: Connection) -> Iterator[str]:
    """A 1 MiB volume t-qa-v in the test host's pool (test:///default is shared per process)."""
    storage.create_pool_volume(conn, "default-pool", "t-qa-v", "1M", "raw")
    yield "t-qa-v"
    storage.delete_pool_volume(conn, "default-pool", "t-qa-v")


def test_download_into_a_missing_directory_is_a_clean_error(
    conn: Connection, volume: str, tmp_path: Path
) -> None:
    target = tmp_path / "missing" / "out.img"
    with pytest.raises(InvalidInput, match="does not exist"):
        storage.download_volume(conn, "default-pool", volume, str(target))
    assert not target.parent.exists()


def test_download_onto_a_directory_is_refused_even_with_force(
    conn: Connection, volume: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="is a directory"):
        storage.download_volume(conn, "default-pool", volume, str(tmp_path), overwrite=True)
    assert list(tmp_path.iterdir()) == []  # no partial file left next to it


def test_huge_size_says_it_is_too_large() -> None:
    with pytest.raises(InvalidInput, match="too large"):
        parse_size("99999999T", what="volume size")
    code, output = _kvmgr("vol", "create", "default-pool", "t-qa-v", "--size", "99999999T")
    _assert_clean_error(code, output, "too large")
