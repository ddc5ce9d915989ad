"""The charts' history (kvmgr.api.stats_history): bounded whatever runs, the fine ring at the
sample interval, older points as bucket averages, VMs gone for the window forgotten."""

from __future__ import annotations

import itertools
import math

from kvmgr.api.stats_history import HOST_SERIES, METRICS, HistoryLimits, HostHistory

LIMITS = HistoryLimits(interval=2.0, window=3600.0, fine_seconds=300.0, bucket=30.0)


def _values(cpu: float, **more: float | None) -> dict[str, float | None]:
    return {"cpu_percent": cpu, "memory_used": 1e9, "memory_total": 2e9, **more}


def _fill(history: HostHistory, start: float, seconds: float, names: list[str]) -> float:
    at = start
    while at < start + seconds:
        history.add(at, {name: _values(cpu=at % 100) for name in names})
        at += LIMITS.interval
    return at - LIMITS.interval


def test_size_is_bounded_however_long_it_runs() -> None:
    history = HostHistory(LIMITS)
    _fill(history, 1_000_020.0, 3600, ["a", "b"])
    size = history.nbytes()
    last = _fill(history, 1_003_620.0, 3 * 3600, ["a", "b"])
    assert history.nbytes() == size  # three hours more, not one byte more
    # two series, each fine (151 slots) + coarse (121 slots) x 8 float32, plus the timestamps
    assert size == 2 * (151 + 121) * len(METRICS) * 4 + (151 + 121) * 8
    assert len(METRICS) == 8
    points = history.series("a", last)
    assert points["t"][0] >= last - 3600  # nothing older than the window
    # an hour: 300 s at 2 s (150 or 151 points) and the rest as 30 s buckets (about 110)
    assert 250 < len(points["t"]) < 275, len(points["t"])


def test_recent_points_are_at_the_interval_older_ones_are_bucket_averages() -> None:
    history = HostHistory(LIMITS)
    start = 1_800_000.0  # a bucket boundary (divisible by 30)
    for step in range(900):  # 30 minutes at 2 s
        at = start + step * 2.0
        history.add(at, {"vm": _values(cpu=10.0 if (step // 15) % 2 == 0 else 30.0)})
    now = start + 899 * 2.0
    points = history.series("vm", now)
    times, cpu = points["t"], points["cpu_percent"]
    assert times == sorted(times) and len(set(times)) == len(times)
    steps = [b - a for a, b in itertools.pairwise(times)]
    fine_from = next(i for i, t in enumerate(times) if t >= now - 300)
    assert set(steps[fine_from:]) == {2.0}  # the newest 5 minutes: every sample
    assert set(steps[: fine_from - 1]) == {30.0}  # older: one point per 30 s bucket
    # each bucket held 15 samples of one value: the averages are those values, on the middle
    assert cpu[0] == 10.0 and cpu[1] == 30.0 and times[0] == start + 15.0
    assert len(times) < 900 / 2


def test_missing_values_and_absent_vms() -> None:
    history = HostHistory(LIMITS)
    history.add(100.0, {"a": _values(cpu=5.0, disk_read_bps=None), "b": _values(cpu=1.0)})
    history.add(102.0, {"b": _values(cpu=2.0)})  # a is gone for one sample
    history.add(104.0, {"a": _values(cpu=7.0), "b": _values(cpu=3.0)})
    a = history.series("a", 104.0)
    assert a["t"] == [100.0, 104.0]  # no point where the VM was not sampled
    assert a["cpu_percent"] == [5.0, 7.0] and a["disk_read_bps"] == [None, None]
    assert history.series("b", 104.0)["cpu_percent"] == [1.0, 2.0, 3.0]
    assert history.series("nobody", 104.0) == {"t": [], **{m: [] for m in METRICS}}
    assert history.series(HOST_SERIES, 104.0)["t"] == []


def test_a_vm_gone_for_the_window_is_forgotten() -> None:
    history = HostHistory(LIMITS)
    history.add(0.0, {"old": _values(cpu=1.0), "kept": _values(cpu=1.0)})
    one = history.nbytes()
    at = 0.0
    while at <= 3600 + 2:
        at += 2.0
        history.add(at, {"kept": _values(cpu=1.0)})
    assert history.names() == ["kept"]
    assert history.nbytes() < one
    assert history.series("old", at)["t"] == []


def test_a_shut_off_vm_is_sampled_with_nothing_known() -> None:
    history = HostHistory(LIMITS)
    history.add(10.0, {"vm": {"state": "shut off", "cpu_percent": None}})
    history.add(12.0, {"vm": {"state": "running", "cpu_percent": None}})
    row = history.series("vm", 12.0)
    assert row["t"] == [10.0, 12.0] and row["running"] == [0.0, 1.0]
    assert row["cpu_percent"] == [None, None]


def test_float32_values_read_back_as_written() -> None:
    history = HostHistory(LIMITS)
    history.add(10.0, {"vm": _values(cpu=12.3, net_rx_bps=1234.5, memory_used=268435456)})
    row = history.series("vm", 10.0)
    assert row["cpu_percent"] == [12.3] and row["net_rx_bps"] == [1234.5]
    assert row["memory_used"] == [268435456.0]
    assert not any(isinstance(v, float) and math.isnan(v) for v in row["memory_total"])
