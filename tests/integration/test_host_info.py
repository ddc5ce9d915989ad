"""``kvmgr host info`` against the real daemon at qemu:///system."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from kvmgr.cli.common import state
from kvmgr.cli.main import app

pytestmark = pytest.mark.integration


def test_host_info_reports_topology_and_guest_support() -> None:
    state.close()  # CliRunner bypasses run(): drop a connection cached by an earlier test
    try:
        result = CliRunner().invoke(app, ["-c", "qemu:///system", "host", "info", "-o", "json"])
    finally:
        state.close()
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["libvirt"].startswith("9.")
    assert info["domain_type"] in ("kvm", "qemu")
    assert info["cpus"] == os.cpu_count()
    assert info["sockets"] * info["cores_per_socket"] * info["threads_per_core"] == info["cpus"]
    assert sum(cell["cpus"] for cell in info["numa_cells"]) == info["cpus"]
    assert "efi" in info["firmware"] and "bios" in info["firmware"]
    assert any(name.startswith("q35=pc-q35-") for name in info["machine_types"])
    q35 = next(v for k, v in info["max_vcpus"].items() if k.startswith("pc-q35"))
    assert q35 >= 255
    assert any(row["size"] == "2 MiB" for row in info["hugepages"])
