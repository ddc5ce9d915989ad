"""What a host check is and how checks run: the machinery under ``kvmgr host check``.

What lives here: :class:`CheckContext` (what a check looks at: the libvirt connection opened once,
the KVM probe run once, paths a test can point elsewhere), :class:`CheckResult` / :class:`Status`
(one row), :class:`Check` (a named check, required or not), and :func:`run_concurrently`: every
check in its own daemon thread under one deadline, so a check that raises or hangs becomes a
FAIL/WARN row with the reason, never a traceback and never a hang.  The checks themselves, their
registry and the verdict live in :mod:`kvmgr.host.checks`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from kvmgr.connect.connection import Connection
from kvmgr.connect.kvm_probe import DEFAULT_DEVICE, ProbeResult, cached_probe, probe_kvm
from kvmgr.connect.kvm_probe import DEFAULT_TIMEOUT as PROBE_TIMEOUT
from kvmgr.errors import KvmgrError
from kvmgr.units import GIB


class Status(StrEnum):
    PASS = "PASS"  # noqa: S105 - a verdict, not a password
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class CheckResult:
    """One row of ``host check``: what was checked, the verdict, what was seen, how to fix it."""

    name: str
    status: Status
    detail: str
    hint: str = ""


@dataclass
class CheckContext:
    """What the checks look at.  Paths are fields so a test can point a check at another file."""

    connect: Callable[[], Connection] | None = None
    kvm_device: str = "/dev/kvm"
    probe_timeout: float = PROBE_TIMEOUT
    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    dev: Path = Path("/dev")
    virtlogd_socket: Path = Path("/run/libvirt/virtlogd-sock")
    qemu_conf: Path = Path("/etc/libvirt/qemu.conf")
    swtpm_localca_conf: Path = Path("/etc/swtpm-localca.conf")
    min_pool_free: int = 10 * GIB
    _conn: Connection | None = field(default=None, repr=False)
    _conn_error: KvmgrError | None = field(default=None, repr=False)
    _probe: ProbeResult | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def connection(self) -> Connection:
        """The libvirt connection, opened once for all checks (its failure is remembered too)."""
        with self._lock:
            if self._conn is None and self._conn_error is None:
                if self.connect is None:
                    self._conn_error = KvmgrError("no libvirt connection was given")
                else:
                    try:
                        self._conn = self.connect()
                    except KvmgrError as err:
                        self._conn_error = err
            if self._conn_error is not None:
                raise self._conn_error
            assert self._conn is not None
            return self._conn

    def probe(self) -> ProbeResult:
        """The functional KVM probe, run fresh (a check must not trust a stale cache).

        For the real device the fresh answer is also stored in the cache VM creation reads, so
        ``host check`` and the domain type chosen for new VMs agree.
        """
        with self._lock:
            if self._probe is None:
                if self.kvm_device == DEFAULT_DEVICE:
                    self._probe = cached_probe(
                        refresh=True, device=self.kvm_device, timeout=self.probe_timeout
                    )
                else:
                    self._probe = probe_kvm(self.kvm_device, timeout=self.probe_timeout)
            return self._probe

    def cpu_flags(self) -> set[str]:
        text = (self.proc / "cpuinfo").read_text()
        flags: set[str] = set()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "features"):
                flags.update(value.split())
        return flags


CheckFunc = Callable[[CheckContext], CheckResult]


@dataclass(frozen=True)
class Check:
    name: str
    func: CheckFunc
    #: True when VMs cannot run at all without this check passing (drives the exit code).
    required: bool = False


def run_concurrently(ctx: CheckContext, checks: list[Check], deadline: float) -> list[CheckResult]:
    """Run ``checks`` concurrently, one row each in order; each must answer within ``deadline``
    seconds of the start (a late one becomes a FAIL row when required, else WARN)."""
    start = time.monotonic()
    slots: list[CheckResult | None] = [None] * len(checks)
    threads = []
    for index, check in enumerate(checks):
        # Daemon threads: a check stuck in a hung syscall must not keep the command from exiting
        # (a ThreadPoolExecutor would join it at interpreter exit).
        thread = threading.Thread(
            target=_run_into, args=(check, ctx, slots, index), daemon=True, name=check.name
        )
        thread.start()
        threads.append(thread)
    results = []
    for index, (check, thread) in enumerate(zip(checks, threads, strict=True)):
        thread.join(max(deadline - (time.monotonic() - start), 0.0))
        result = slots[index]
        if result is None:
            status = Status.FAIL if check.required else Status.WARN
            result = CheckResult(
                check.name,
                status,
                f"check did not finish within {deadline:g} s",
                "something on the host is hanging; investigate",
            )
        results.append(result)
    return results


def _run_into(check: Check, ctx: CheckContext, slots: list[CheckResult | None], index: int) -> None:
    slots[index] = _run_one(check, ctx)


def _run_one(check: Check, ctx: CheckContext) -> CheckResult:
    """Run one check; an exception is reported as the row's result, never raised."""
    try:
        return check.func(ctx)
    except KvmgrError as err:
        message, hint = err.message, err.hint or ""
    except Exception as err:  # a crashing check must still produce a row
        message, hint = f"check could not run: {type(err).__name__}: {err}", ""
    status = Status.FAIL if check.required else Status.WARN
    return CheckResult(check.name, status, message, hint)
