"""The last hour of CPU, memory, disk and network of every VM and of the host, kept in memory by
each API replica for the charts of the web UI (``GET /api/v1/vms/{name}/stats/history``,
``GET /api/v1/host/stats/history``).

Fed by the sampler of ``kvmgr serve`` (kvmgr.api.events.StatsPublisher), one bulk sample per
interval.  Bounded by construction, so 1,000 VMs cost a known amount (bench ``stats_history``):

- a **fine** ring holds the newest ``fine_seconds`` at the sample interval;
- a **coarse** ring holds the whole window as ``bucket``-second averages (each bucket closed from
  the fine ring when the first sample of the next one arrives);
- every series is one ``array('f')`` per ring (float32: 4 bytes a value, NaN for "no value"),
  slot-major, so a sample costs one slice assignment per VM and no Python object per point;
- a VM gone from the samples for longer than the window is forgotten.

A read merges the two: coarse points older than the fine ring's oldest, then the fine points.
Times are the wall clock (seconds since the epoch), which is what a chart's axis shows.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The values kept per sample of a VM or of the host, in this order.  ``running`` is 1 or 0 for
#: a VM (a shut-off VM is sampled too, with nothing else known), none for the host.
METRICS = (
    "running",
    "cpu_percent",
    "memory_used",
    "memory_total",
    "disk_read_bps",
    "disk_write_bps",
    "net_rx_bps",
    "net_tx_bps",
)
#: The series name of the host itself (no VM has an empty name).
HOST_SERIES = ""
WINDOW = 3600.0
FINE_SECONDS = 300.0
BUCKET = 30.0

_WIDTH = len(METRICS)
_NAN = float("nan")
_EMPTY_ROW = array("f", [_NAN] * _WIDTH)


def _row(values: Mapping[str, Any]) -> array[float]:
    get = values.get  # called for every VM of every sample: 1,000 times per interval
    row = array("f", [_NAN if (v := get(m)) is None else v for m in METRICS])
    if "state" in values:
        row[0] = 1.0 if values["state"] == "running" else 0.0
    return row


class _Ring:
    """``capacity`` slots of one timestamp each and, per series, ``_WIDTH`` float32 values."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.times = array("d", [_NAN] * capacity)
        self.written = 0  # slots written since the start; the next slot is written % capacity
        self.series: dict[str, array[float]] = {}

    def add(self, at: float, rows: Mapping[str, array[float]]) -> None:
        slot = self.written % self.capacity
        self.times[slot] = at
        start, end = slot * _WIDTH, (slot + 1) * _WIDTH
        for name in rows:
            if name not in self.series:
                self.series[name] = _EMPTY_ROW * self.capacity
        for name, values in self.series.items():
            values[start:end] = rows.get(name, _EMPTY_ROW)
        self.written += 1

    def slots(self) -> list[int]:
        """Written slots, oldest first."""
        count = min(self.written, self.capacity)
        first = self.written - count
        return [(first + i) % self.capacity for i in range(count)]

    def newest(self, count: int) -> list[int]:
        return self.slots()[-count:] if count > 0 else []

    def drop(self, names: Iterable[str]) -> None:
        for name in names:
            self.series.pop(name, None)


@dataclass(frozen=True)
class HistoryLimits:
    interval: float
    window: float = WINDOW
    fine_seconds: float = FINE_SECONDS
    bucket: float = BUCKET

    @property
    def fine_capacity(self) -> int:
        # Never fewer slots than one bucket needs, so a bucket is always closed from the ring.
        seconds = max(self.fine_seconds, self.bucket)
        return max(2, math.ceil(seconds / self.interval) + 1)

    @property
    def coarse_capacity(self) -> int:
        return math.ceil(self.window / self.bucket) + 1


class HostHistory:
    """The history of one host: its VMs' series and its own (:data:`HOST_SERIES`)."""

    def __init__(self, limits: HistoryLimits) -> None:
        self.limits = limits
        self._fine = _Ring(limits.fine_capacity)
        self._coarse = _Ring(limits.coarse_capacity)
        self._bucket: int | None = None  # the bucket the newest fine samples belong to
        self._in_bucket = 0
        self._last_seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, at: float, samples: Mapping[str, Mapping[str, Any]]) -> None:
        """One sample at wall-clock time ``at``: ``samples`` maps a VM name (or HOST_SERIES) to
        its values by :data:`METRICS` name (missing or None: no value)."""
        rows = {name: _row(values) for name, values in samples.items()}
        with self._lock:
            bucket = int(at // self.limits.bucket)
            if self._bucket is not None and bucket != self._bucket:
                self._close_bucket()
            if bucket != self._bucket:
                self._bucket, self._in_bucket = bucket, 0
            self._fine.add(at, rows)
            self._in_bucket += 1
            for name in rows:
                self._last_seen[name] = at
            gone = [n for n, seen in self._last_seen.items() if at - seen > self.limits.window]
            for name in gone:
                del self._last_seen[name]
            self._fine.drop(gone)
            self._coarse.drop(gone)

    def _close_bucket(self) -> None:
        """Average the fine samples of the bucket just ended into one coarse point."""
        assert self._bucket is not None
        slots = self._fine.newest(min(self._in_bucket, self._fine.capacity))
        if not slots:
            return
        rows: dict[str, array[float]] = {}
        for name, values in self._fine.series.items():
            means = array("f", _EMPTY_ROW)
            for metric in range(_WIDTH):
                seen = [values[s * _WIDTH + metric] for s in slots]
                known = [v for v in seen if not math.isnan(v)]
                if known:
                    means[metric] = sum(known) / len(known)
            if any(not math.isnan(v) for v in means):
                rows[name] = means
        middle = (self._bucket + 0.5) * self.limits.bucket
        self._coarse.add(middle, rows)

    def series(self, name: str, now: float) -> dict[str, Any]:
        """The last window of ``name``: ``{"t": [...], metric: [...]}`` (None where unknown),
        oldest first; empty lists when ``name`` has no sample in the window."""
        out: dict[str, list[float | None]] = {"t": [], **{m: [] for m in METRICS}}
        with self._lock:
            since = now - self.limits.window
            fine_slots = [s for s in self._fine.slots() if self._fine.times[s] >= since]
            fine_from = self._fine.times[fine_slots[0]] if fine_slots else math.inf
            half = self.limits.bucket / 2
            for ring, slots in (
                (self._coarse, [s for s in self._coarse.slots()
                                if since <= self._coarse.times[s] and
                                self._coarse.times[s] + half <= fine_from]),
                (self._fine, fine_slots),
            ):  # fmt: skip
                values = ring.series.get(name)
                if values is None:
                    continue
                for slot in slots:
                    row = values[slot * _WIDTH : (slot + 1) * _WIDTH]
                    if all(math.isnan(v) for v in row):
                        continue  # the VM was not there then
                    out["t"].append(round(ring.times[slot], 3))
                    for metric, value in zip(METRICS, row, strict=True):
                        out[metric].append(None if math.isnan(value) else _tidy(value))
        return out

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._last_seen)

    def nbytes(self) -> int:
        """The bytes of the arrays (the bulk of the memory; bench stats_history measures all)."""
        with self._lock:
            rings = (self._fine, self._coarse)
            return sum(
                ring.times.itemsize * len(ring.times)
                + sum(v.itemsize * len(v) for v in ring.series.values())
                for ring in rings
            )


def _tidy(value: float) -> float:
    # float32 turns 12.3 into 12.300000190734863: round to what it holds (7 digits); whole
    # numbers (bytes) are left as they are, float32 holds those up to 2**24 exactly and larger
    # ones to within 1 part in 2**24.
    return value if value.is_integer() else float(f"{value:.7g}")


class StatsHistory:
    """The histories of the hosts this replica samples, by registered host name."""

    def __init__(self, limits: HistoryLimits) -> None:
        self.limits = limits
        self._hosts: dict[str, HostHistory] = {}
        self._lock = threading.Lock()

    def host(self, name: str) -> HostHistory:
        with self._lock:
            found = self._hosts.get(name)
            if found is None:
                found = self._hosts[name] = HostHistory(self.limits)
            return found

    def get(self, name: str) -> HostHistory | None:
        with self._lock:
            return self._hosts.get(name)

    def sampled_hosts(self) -> list[str]:
        with self._lock:
            return sorted(self._hosts)
