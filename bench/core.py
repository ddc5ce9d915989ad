"""What every benchmark shares: interleaved timing, medians and spread, ratios, targets, output.

A benchmark yields :class:`Result` lines (a measured subject, usually against a baseline measured
in the same run) or :class:`Skip` lines saying why it could not run.  The runner prints them as a
table and writes them as JSON.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class BenchError(RuntimeError):
    """A benchmark step failed (a command exited non-zero, a guest never got ready...)."""


# ------------------------------------------------------------------------------ targets
@dataclass(frozen=True)
class Target:
    """What a line must reach: a ceiling on the ratio to its baseline and/or on its value."""

    text: str
    max_ratio: float | None = None
    max_value: float | None = None

    def verdict(self, ratio: float | None, value: float) -> str:
        if self.max_ratio is not None and (ratio is None or ratio > self.max_ratio):
            return "MISS"
        if self.max_value is not None and value > self.max_value:
            return "MISS"
        return "PASS"


# ------------------------------------------------------------------------------ lines
def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no values measured")
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> float:
    """Half the range of the values relative to their median (0.05 means +-5 %)."""
    mid = median(values)
    if len(values) < 2 or mid == 0:
        return 0.0
    return (max(values) - min(values)) / 2 / abs(mid)


def ratio(subject: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Median of the subject over median of the baseline; None when the baseline is zero."""
    base = median(baseline)
    if base == 0:
        return None
    return median(subject) / base


@dataclass
class Result:
    """One measured figure: the subject's values, its baseline's, and the target it is held to."""

    bench: str
    case: str
    unit: str
    subject: str
    values: list[float]
    baseline: str | None = None
    baseline_values: list[float] = field(default_factory=list)
    target: Target | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return median(self.values)

    @property
    def ratio(self) -> float | None:
        if not self.baseline_values:
            return None
        return ratio(self.values, self.baseline_values)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "info"
        return self.target.verdict(self.ratio, self.median)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "bench": self.bench,
            "case": self.case,
            "unit": self.unit,
            "subject": self.subject,
            "median": self.median,
            "spread": spread(self.values),
            "values": self.values,
            "baseline": self.baseline,
            "baseline_median": median(self.baseline_values) if self.baseline_values else None,
            "baseline_spread": spread(self.baseline_values) if self.baseline_values else None,
            "baseline_values": self.baseline_values,
            "ratio": self.ratio,
            "target": self.target.text if self.target else None,
            "verdict": self.verdict,
            "note": self.note,
        }
        return data


@dataclass
class Skip:
    """A benchmark (or one case of it) that did not run, and why."""

    bench: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"bench": self.bench, "skipped": self.reason}


Line = Result | Skip


# ------------------------------------------------------------------------------ measuring
def interleaved(
    subjects: Mapping[str, Callable[[], float]], reps: int, *, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each measurement ``reps`` times, interleaved, rotating which one goes first.

    Each callable returns its own measured value (seconds, bytes...), so setup and cleanup stay
    outside the figure.  Warm-up rounds are run and thrown away.
    """
    names = list(subjects)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + reps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            value = subjects[name]()
            if round_index >= warmup:
                results[name].append(value)
    return results


def timed(action: Callable[[], object]) -> Callable[[], float]:
    """A measurement that is the wall time of ``action``."""

    def measure() -> float:
        began = time.perf_counter()
        action()
        return time.perf_counter() - began

    return measure


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 600,
) -> str:
    """Run a command to completion; its stdout, or :class:`BenchError` with its stderr."""
    merged = {**os.environ, **env} if env else None
    proc = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        env=merged,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BenchError(f"{' '.join(argv[:3])}... exited {proc.returncode}: {' | '.join(tail)}")
    return proc.stdout


def timed_command(argv: Sequence[str], **kwargs: Any) -> Callable[[], float]:
    return timed(lambda: run_command(argv, **kwargs))


# ------------------------------------------------------------------------------ output
def format_value(value: float, unit: str) -> str:
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.0f} us"
        if value < 1:
            return f"{value * 1e3:.1f} ms"
        return f"{value:.2f} s"
    if unit == "B":
        for name, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if abs(value) >= size:
                return f"{value / size:.1f} {name}"
        return f"{value:.0f} B"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:g} {unit}"


def _cell(values: Sequence[float], unit: str) -> str:
    if not values:
        return "-"
    return f"{format_value(median(values), unit)} +-{spread(values) * 100:.0f}%"


_HEADER = ("benchmark", "case", "kvmgr", "baseline", "ratio", "target", "result")


def table_rows(lines: Iterable[Line]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for line in lines:
        if isinstance(line, Skip):
            rows.append((line.bench, f"skipped: {line.reason}", "", "", "", "", "skip"))
            continue
        base = (
            f"{line.baseline}: {_cell(line.baseline_values, line.unit)}" if line.baseline else "-"
        )
        ratio_text = f"{line.ratio:.2f}x" if line.ratio is not None else "-"
        rows.append(
            (
                line.bench,
                line.case,
                f"{line.subject}: {_cell(line.values, line.unit)}",
                base,
                ratio_text,
                line.target.text if line.target else "-",
                line.verdict,
            )
        )
    return rows


def render_table(lines: Iterable[Line]) -> str:
    """A plain-text table; a skipped line spans the row after its benchmark name."""
    rows = table_rows(lines)
    widths = [len(title) for title in _HEADER]
    for row in rows:
        if row[-1] == "skip":
            continue
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    out = ["  ".join(title.ljust(width) for title, width in zip(_HEADER, widths, strict=True))]
    out.append("  ".join("-" * width for width in widths))
    for row in rows:
        if row[-1] == "skip":
            out.append(f"{row[0].ljust(widths[0])}  {row[1]}")
        else:
            out.append(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            )
    return "\n".join(line.rstrip() for line in out)


def render_markdown(lines: Iterable[Line]) -> str:
    """The same table in Markdown, for docs/BENCHMARKS.md."""
    rows = table_rows(lines)
    out = ["| " + " | ".join(_HEADER) + " |", "|" + " --- |" * len(_HEADER)]
    for row in rows:
        cells = row if row[-1] != "skip" else (row[0], row[1], "", "", "", "", "skip")
        out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(out)


def machine_facts() -> dict[str, Any]:
    """Where the numbers were measured."""
    cpu = "unknown"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_kib = int(first.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def results_document(
    lines: Sequence[Line], *, mode: str, started: float, facts: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "mode": mode,
        "seconds": round(time.time() - started, 1),
        "machine": dict(facts),
        "results": [line.as_dict() for line in lines],
    }


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


# ------------------------------------------------------------------------------ run context
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"


@dataclass
class Context:
    """What a benchmark needs to know about this run."""

    quick: bool
    workdir: Path
    system_uri: str = "qemu:///system"
    verbose: bool = True

    @property
    def kvmgr(self) -> str:
        return str(VENV_BIN / "kvmgr")

    @property
    def python(self) -> str:
        return str(VENV_BIN / "python")

    def reps(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def say(self, message: str) -> None:
        if self.verbose:
            print(f"  .. {message}", flush=True)


def tool_versions() -> dict[str, str]:
    """Versions of libvirt, QEMU and the peer tools the baselines use."""
    versions: dict[str, str] = {}
    for name, argv in (
        ("libvirt", ["virsh", "--version"]),
        ("virt-install", ["virt-install", "--version"]),
        ("qemu", ["qemu-system-x86_64", "--version"]),
        ("virtnbdbackup", ["virtnbdbackup", "--version"]),
    ):
        try:
            versions[name] = run_command(argv, timeout=30).splitlines()[0].strip()
        except (BenchError, OSError, IndexError, subprocess.TimeoutExpired):
            versions[name] = "unavailable"
    return versions
