"""Piped listings are whole: no cell is cut at 80 columns, and tsv/csv/--no-headers work.

Every command runs as a real subprocess with stdout a pipe (as ``kvmgr net list | grep x``),
on a test:/// driver node whose names and paths are longer than a terminal line.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

NODE = Path(__file__).parents[1] / "data" / "testdriver" / "long-names.xml"
URI = f"test://{NODE}"
VM = "a-virtual-machine-with-a-rather-long-name-for-pipes-0123456789"
NET = "a-network-with-a-long-name-for-pipes"
POOL = "a-storage-pool-with-a-long-name-for-pipes"
DISK = "/var/lib/libvirt/images/a-very-long-directory-name/a-virtual-machine-disk.qcow2"

#: (command, values that must appear whole on one line of its output)
LISTINGS = [
    (["vm", "list"], [VM, "running"]),
    (["vm", "info", VM], [VM, DISK]),
    (["net", "list"], [NET, "192.168.212.0/24", VM]),
    (["pool", "list"], [POOL, "/var/lib/libvirt/images/a-very-long-directory-name"]),
    (["vol", "list", POOL], ["a-virtual-machine-disk.qcow2", DISK, VM]),
]


def kvmgr(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-m", "kvmgr.cli.main", "-c", URI, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


@pytest.mark.parametrize(("command", "values"), LISTINGS, ids=" ".join)
def test_piped_table_keeps_every_value_whole(command: list[str], values: list[str]) -> None:
    out = kvmgr(*command)
    for value in values:
        assert value in out, f"{value!r} was cut from:\n{out}"
    assert "…" not in out
    assert all(line == line.rstrip() for line in out.splitlines()), "trailing blanks"


def test_no_headers_anywhere_on_the_line() -> None:
    out = kvmgr("net", "list", "--no-headers")
    assert out.splitlines()[0].startswith(NET)


@pytest.mark.parametrize("fmt", ["tsv", "csv"])
def test_delimited_output_parses(fmt: str) -> None:
    out = kvmgr("vol", "list", POOL, "-o", fmt)
    rows = list(csv.reader(io.StringIO(out), delimiter="\t" if fmt == "tsv" else ","))
    header, row = rows
    assert header[:2] == ["NAME", "FORMAT"]
    assert dict(zip(header, row, strict=True))["PATH"] == DISK


def test_wide_adds_the_other_keys() -> None:
    narrow = kvmgr("vm", "list").splitlines()[0].split()
    wide = kvmgr("vm", "list", "-o", "wide").splitlines()[0].split()
    assert "UUID" in wide and "UUID" not in narrow
    assert wide[: len(narrow)] == narrow
