"""``host check`` machinery: rows never tracebacks, deadlines, exit decision, individual checks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvmgr.connect import open_connection
from kvmgr.errors import ConnectionFailed
from kvmgr.host import checks
from kvmgr.host.check_runner import Check, CheckContext, CheckResult, Status
from kvmgr.host.checks import (
    CHECKS,
    check_cgroups,
    check_kvm_probe,
    check_memory,
    run_checks,
)


def _ok(ctx: CheckContext) -> CheckResult:
    return CheckResult("ok", Status.PASS, "fine")


def _crash(ctx: CheckContext) -> CheckResult:
    raise ZeroDivisionError("boom")


def _hang(ctx: CheckContext) -> CheckResult:
    time.sleep(30)
    raise AssertionError("unreachable")


def test_registry_covers_virt_host_validate_and_more() -> None:
    names = {check.name for check in CHECKS}
    assert {
        checks.HW_VIRT,
        checks.KVM_DEVICE,
        checks.KVM_ACCESS,
        checks.VHOST_NET,
        checks.TUN,
        checks.CGROUPS,
        checks.IOMMU,
        checks.SECURE_GUEST,
        checks.KVM_PROBE,
        checks.NESTED,
        checks.KVM_MODULE,
        checks.QEMU,
        checks.LIBVIRT,
        checks.VIRTLOGD,
        checks.DEFAULT_NET,
        checks.POOLS,
        checks.MEMORY,
        checks.CPUS,
    } <= names
    assert len(names) == len(CHECKS), "check names must be unique"


def test_a_crashing_check_is_a_row_with_the_reason() -> None:
    report = run_checks(CheckContext(), checks=[Check("ok", _ok), Check("crash", _crash)])
    crash = report.results[1]
    assert crash.status is Status.WARN
    assert "ZeroDivisionError: boom" in crash.detail
    assert report.can_run_vms


def test_a_hanging_check_is_cut_off_at_the_deadline() -> None:
    start = time.monotonic()
    report = run_checks(CheckContext(), checks=[Check("hang", _hang, required=True)], deadline=0.5)
    assert time.monotonic() - start < 2
    assert report.results[0].status is Status.FAIL
    assert "did not finish within 0.5 s" in report.results[0].detail
    assert not report.can_run_vms
    assert "cannot run VMs" in report.summary and "hang" in report.summary


def test_probe_of_a_missing_device_fails_at_once_with_the_path() -> None:
    ctx = CheckContext(kvm_device="/nonexistent/kvm")
    start = time.monotonic()
    result = check_kvm_probe(ctx)
    assert time.monotonic() - start < 1
    assert result.status is Status.FAIL
    assert "/nonexistent/kvm does not exist" in result.detail
    assert "emulation" in result.hint


def test_unreachable_daemon_fails_required_check_and_dependent_rows_say_why() -> None:
    def refuse() -> None:
        raise ConnectionFailed("cannot connect to qemu:///system", hint="start libvirtd")

    ctx = CheckContext(connect=refuse)  # type: ignore[arg-type]
    selected = [c for c in CHECKS if c.name in (checks.LIBVIRT, checks.DEFAULT_NET, checks.POOLS)]
    report = run_checks(ctx, checks=selected)
    by_name = {r.name: r for r in report.results}
    assert by_name[checks.LIBVIRT].status is Status.FAIL
    assert by_name[checks.LIBVIRT].hint == "start libvirtd"
    assert by_name[checks.DEFAULT_NET].status is Status.WARN
    assert "cannot connect" in by_name[checks.POOLS].detail
    assert not report.can_run_vms


def test_libvirt_checks_on_the_test_driver() -> None:
    with open_connection("test:///default") as conn:
        ctx = CheckContext(connect=lambda: conn)
        selected = [
            c for c in CHECKS if c.name in (checks.LIBVIRT, checks.DEFAULT_NET, checks.POOLS)
        ]
        results = {r.name: r for r in run_checks(ctx, checks=selected).results}
    assert results[checks.LIBVIRT].status is Status.PASS
    assert "test:///default reachable" in results[checks.LIBVIRT].detail
    assert results[checks.DEFAULT_NET].status is Status.PASS  # the test driver has one
    assert results[checks.POOLS].status in (Status.PASS, Status.WARN)
    assert "default-pool" in results[checks.POOLS].detail


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cgroup_v2_controllers_are_read_from_the_unified_hierarchy(tmp_path: Path) -> None:
    unified = tmp_path / "cgroup"
    _write(unified / "cgroup.controllers", "cpuset cpu io memory pids\n")
    _write(tmp_path / "proc" / "mounts", f"cgroup2 {unified} cgroup2 rw,nosuid 0 0\n")
    result = check_cgroups(CheckContext(proc=tmp_path / "proc"))
    assert result.status is Status.PASS, result.detail
    assert result.detail.startswith("cgroup v2")


def test_cgroup_v1_missing_controller_is_named(tmp_path: Path) -> None:
    mounts = "".join(
        f"cgroup /sys/fs/cgroup/{c} cgroup rw,{c} 0 0\n" for c in ("cpu", "cpuacct", "memory")
    )
    _write(tmp_path / "mounts", mounts)
    result = check_cgroups(CheckContext(proc=tmp_path))
    assert result.status is Status.WARN
    assert "cpuset, devices, blkio unavailable" in result.detail


@pytest.mark.parametrize(
    ("available_kib", "status"),
    [(100 * 1024, Status.FAIL), (1024 * 1024, Status.WARN), (8 * 1024 * 1024, Status.PASS)],
)
def test_memory_thresholds(tmp_path: Path, available_kib: int, status: Status) -> None:
    _write(tmp_path / "meminfo", f"MemTotal: 16000000 kB\nMemAvailable: {available_kib} kB\n")
    assert check_memory(CheckContext(proc=tmp_path)).status is status


def test_probe_fail_is_not_fatal_and_summary_says_emulation() -> None:
    def probe_fail(ctx: CheckContext) -> CheckResult:
        return CheckResult(checks.KVM_PROBE, Status.FAIL, "no KVM")

    report = run_checks(CheckContext(), checks=[Check(checks.KVM_PROBE, probe_fail)])
    assert report.can_run_vms
    assert "software emulation" in report.summary
