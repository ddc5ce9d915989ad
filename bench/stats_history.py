"""What the charts' history costs (issue 16 item 10): memory of the last hour at N VMs, and the
sampler's work per interval (one bulk stats call, the host's CPU and memory, rates, the history).

    PYTHONPATH=src .venv/bin/python -m bench.stats_history [--vms 1000] [--interval 2]
        [--uri qemu:///system]

Memory is measured with tracemalloc over a full window of samples (everything the history
allocates, not only its arrays); the sampler's cost on a test:/// driver file with N VMs (the
libvirt part of a real daemon grows with the VMs' devices, so ``--uri`` measures one too).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.driverfile import write_driver_file
from kvmgr.api.stats_history import HOST_SERIES, HistoryLimits, HostHistory
from kvmgr.connect import open_connection
from kvmgr.services import stats


def _row(index: int, step: int) -> dict[str, float | str]:
    return {
        "state": "running",
        "cpu_percent": float((index + step) % 100),
        "memory_used": 2.0e8 + step,
        "memory_total": 2.68e8,
        "disk_read_bps": 1000.0 * step,
        "disk_write_bps": 10.0 * step,
        "net_rx_bps": 1.5 * step,
        "net_tx_bps": 2.5 * step,
    }


def history_memory(vms: int, interval: float) -> tuple[int, int, float]:
    """(traced bytes, array bytes, seconds per add) after a full window plus one bucket."""
    limits = HistoryLimits(interval=interval)
    names = [f"t-bench-{i:05d}" for i in range(vms)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    history = HostHistory(limits)
    start = 2_000_000_000.0
    steps = int((limits.window + limits.bucket) / interval)
    costs = []
    for step in range(steps):
        samples = {name: _row(i, step) for i, name in enumerate(names)}
        samples[HOST_SERIES] = _row(0, step)
        began = time.perf_counter()
        history.add(start + step * interval, samples)
        costs.append(time.perf_counter() - began)
        del samples
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return traced, history.nbytes(), statistics.median(costs)


def sampler_cost(uri: str, interval: float, rounds: int = 15) -> tuple[int, float, float]:
    """(VMs, median seconds per sample, median of the history's part) on ``uri``."""
    conn = open_connection(uri)
    history = HostHistory(HistoryLimits(interval=interval))
    whole, part = [], []
    previous = None
    try:
        for _ in range(rounds):
            began = time.perf_counter()
            sample = stats.collect(conn)
            counters = stats.host_counters(conn)
            before = previous[0] if previous else stats.StatsSample(sample.taken_at - interval)
            rates = stats.rates(before, sample)
            host = stats.host_rates(previous[1] if previous else None, counters, rates)
            rows = {row.name: row.as_dict() for row in rates}
            middle = time.perf_counter()
            history.add(time.time(), {HOST_SERIES: host.as_dict(), **rows})
            ended = time.perf_counter()
            whole.append(ended - began)
            part.append(ended - middle)
            previous = (sample, counters)
        return len(sample.vms), statistics.median(whole), statistics.median(part)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--uri", default=None, help="also measure the sampler on this daemon")
    args = parser.parse_args()
    traced, arrays, per_add = history_memory(args.vms, args.interval)
    print(
        f"history of {args.vms} VMs + host, one hour at {args.interval} s: "
        f"{traced / 2**20:.1f} MiB traced ({arrays / 2**20:.1f} MiB of arrays), "
        f"{per_add * 1e3:.2f} ms per sample added"
    )
    with tempfile.TemporaryDirectory() as tmp:
        uri = write_driver_file(Path(tmp) / "history.xml", args.vms)
        count, whole, part = sampler_cost(uri, args.interval)
    print(
        f"sampler on test:/// with {count} VMs: {whole * 1e3:.1f} ms per sample "
        f"(history {part * 1e3:.1f} ms) = {100 * whole / args.interval:.2f} % of one CPU "
        f"at {args.interval} s"
    )
    if args.uri:
        count, whole, part = sampler_cost(args.uri, args.interval)
        print(
            f"sampler on {args.uri} with {count} VMs: {whole * 1e3:.1f} ms per sample "
            f"(history {part * 1e3:.2f} ms)"
        )


if __name__ == "__main__":
    main()
