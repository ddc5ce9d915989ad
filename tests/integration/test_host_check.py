"""``kvmgr host check`` and the functional KVM probe on this machine (real daemon, real /dev/kvm).

The tests assert what the host truly gives, either way: where /dev/kvm runs guest code the probe
passes and `host check` says KVM; where it does not (this development machine: nested
virtualisation hangs), the probe fails within its timeout with a reason and kvmgr still says the
host can run VMs, with software emulation.  The libvirt version is the daemon's own.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from kvmgr.cli.common import state
from kvmgr.cli.main import app
from kvmgr.connect.kvm_probe import probe_kvm
from kvmgr.host import checks

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _fresh_cli_connection() -> Iterator[None]:
    """CliRunner does not go through ``run()``, so close the cached connection between tests."""
    state.close()
    yield
    state.close()


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="this host has no /dev/kvm")
def test_probe_of_the_real_device_answers_within_its_timeout() -> None:
    start = time.monotonic()
    result = probe_kvm("/dev/kvm", timeout=2.0)
    elapsed = time.monotonic() - start
    assert elapsed < 3.5
    if result.usable:
        assert elapsed < 2.0  # guest code ran to its end
    else:
        assert result.reason  # e.g. "did not finish within 2 s", or the ioctl that failed
        if "did not finish" in result.reason:
            assert elapsed >= 2.0


def test_cli_check_against_the_real_daemon() -> None:
    start = time.monotonic()
    result = CliRunner().invoke(app, ["--connect", "qemu:///system", "host", "check", "-o", "json"])
    elapsed = time.monotonic() - start
    assert result.exit_code == 0, result.output
    rows = {row["check"]: row for row in json.loads(result.output)}
    probe = rows[checks.KVM_PROBE]
    truth = probe_kvm("/dev/kvm") if os.path.exists("/dev/kvm") else None
    if truth is not None and truth.usable:
        assert probe["status"] == "PASS"
        assert "software emulation" not in rows["summary"]["detail"]
    else:
        assert probe["status"] in ("FAIL", "WARN")
        assert probe["detail"]  # the reason, e.g. "guest code ... did not finish within 3 s"
        assert "emulation" in probe["hint"]
        assert "software emulation" in rows["summary"]["detail"]
    assert rows[checks.LIBVIRT]["status"] == "PASS"
    major, minor = _daemon_version()
    assert f"libvirt {major}.{minor}" in rows[checks.LIBVIRT]["detail"]
    assert rows[checks.VIRTLOGD]["status"] == "PASS"
    assert rows[checks.QEMU]["status"] == "PASS"
    assert all(row["status"] in ("PASS", "WARN", "FAIL") for row in rows.values())
    assert elapsed < 10, "checks run concurrently: about the probe's 3 s timeout"


def _daemon_version() -> tuple[int, int]:
    import libvirt

    connection = libvirt.open("qemu:///system")
    try:
        version = connection.getLibVersion()
    finally:
        connection.close()
    return version // 1_000_000, version // 1000 % 1000


def test_cli_check_table_ends_with_the_summary() -> None:
    result = CliRunner().invoke(app, ["--connect", "qemu:///system", "host", "check"])
    assert result.exit_code == 0, result.output
    assert "KVM runs guest code" in result.output
    assert "[/]" not in result.output  # not a terminal: plain cells, no Rich markup
    assert any(line.split()[2:3] == ["PASS"] for line in result.output.splitlines())
    last = result.output.splitlines()[-1]
    usable = os.path.exists("/dev/kvm") and probe_kvm("/dev/kvm").usable
    assert ("with KVM acceleration" if usable else "software emulation") in last


def test_unreachable_daemon_makes_check_exit_non_zero(tmp_path: os.PathLike[str]) -> None:
    # A socket path nobody listens on: libvirt fails to connect, the check reports it, no traceback.
    uri = f"qemu:///system?socket={tmp_path}/nobody.sock"
    result = CliRunner().invoke(app, ["--connect", uri, "host", "check", "-o", "json"])
    assert result.exit_code == 1, result.output
    rows = {row["check"]: row for row in json.loads(result.output)}
    assert rows[checks.LIBVIRT]["status"] == "FAIL"
    assert "cannot run VMs" in rows["summary"]["detail"]
