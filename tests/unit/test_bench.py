"""The benchmark runner's pure parts: ratios, spread, targets, interleaving, table and JSON,
the test:/// driver file generator and the call-counting proxy (on libvirt's test driver)."""

from __future__ import annotations

import json
from pathlib import Path

import libvirt
import pytest
from bench import core
from bench.counting import CallLog, CountingConnection, CountingDomain
from bench.driverfile import TEST_NS, domain_name, driver_xml, write_driver_file
from lxml import etree


# ------------------------------------------------------------------ statistics and targets
def test_ratio_is_median_over_median() -> None:
    assert core.ratio([3.0, 1.0, 2.0], [1.0, 1.0, 100.0]) == 2.0


def test_ratio_with_zero_baseline_is_none() -> None:
    assert core.ratio([1.0], [0.0]) is None


def test_median_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        core.median([])


def test_spread_is_half_range_over_median() -> None:
    assert core.spread([9.0, 10.0, 11.0]) == pytest.approx(0.1)
    assert core.spread([5.0]) == 0.0


@pytest.mark.parametrize(
    ("target", "ratio", "value", "verdict"),
    [
        (core.Target("<=1.5x", max_ratio=1.5), 1.5, 1.0, "PASS"),
        (core.Target("<=1.5x", max_ratio=1.5), 1.51, 1.0, "MISS"),
        (core.Target("<=1.5x", max_ratio=1.5), None, 1.0, "MISS"),
        (core.Target("<1 s", max_value=1.0), None, 0.4, "PASS"),
        (core.Target("<1 s", max_value=1.0), None, 1.2, "MISS"),
        (core.Target("both", max_ratio=2.0, max_value=1.0), 1.0, 1.5, "MISS"),
    ],
)
def test_target_verdicts(
    target: core.Target, ratio: float | None, value: float, verdict: str
) -> None:
    assert target.verdict(ratio, value) == verdict


def test_result_without_target_is_info_and_ratio_uses_baseline() -> None:
    line = core.Result("b", "c", "s", "kvmgr", [2.0, 4.0, 3.0], "base", [1.0, 1.5, 2.0])
    assert line.ratio == 2.0
    assert line.verdict == "info"
    line.target = core.Target("<=1.5x", max_ratio=1.5)
    assert line.verdict == "MISS"


# ------------------------------------------------------------------ interleaving
def test_interleaved_rotates_order_and_drops_warmup() -> None:
    order: list[str] = []
    counter = {"a": 0.0, "b": 100.0}

    def make(name: str):  # type: ignore[no-untyped-def]
        def measure() -> float:
            order.append(name)
            counter[name] += 1
            return counter[name]

        return measure

    results = core.interleaved({"a": make("a"), "b": make("b")}, reps=3, warmup=1)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert results == {"a": [2.0, 3.0, 4.0], "b": [102.0, 103.0, 104.0]}


def test_run_command_failure_names_the_command() -> None:
    with pytest.raises(core.BenchError, match="exited 3"):
        core.run_command(["sh", "-c", "echo broken >&2; exit 3"])


# ------------------------------------------------------------------ output
def _lines() -> list[core.Line]:
    return [
        core.Result(
            "inventory",
            "library N=100",
            "s",
            "list_vms",
            [0.002, 0.003],
            "raw",
            [0.002, 0.002],
            core.Target("<=1.2x raw", max_ratio=1.2),
        ),
        core.Result(
            "rss", "idle", "MB", "serve", [80.0], target=core.Target("<150", max_value=150)
        ),
        core.Skip("stats", "not available yet: kvmgr.services.stats is missing"),
    ]


def test_table_shows_ratio_verdict_and_skip_reason() -> None:
    text = core.render_table(_lines())
    rows = text.splitlines()
    assert rows[0].split() == [
        "benchmark",
        "case",
        "kvmgr",
        "baseline",
        "ratio",
        "target",
        "result",
    ]
    assert "1.25x" in rows[2] and rows[2].endswith("MISS")
    assert "80.0 MB" in rows[3] and rows[3].endswith("PASS")
    assert rows[4].startswith("stats") and "not available yet" in rows[4]


def test_markdown_table_has_one_row_per_line() -> None:
    text = core.render_markdown(_lines())
    assert len(text.splitlines()) == 2 + 3
    assert "| stats | skipped: not available yet" in text


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0.0005, "s", "500 us"),
        (0.25, "s", "250.0 ms"),
        (12.5, "s", "12.50 s"),
        (3 * 1024**2, "B", "3.0 MiB"),
        (512, "B", "512 B"),
        (7.0, "calls", "7 calls"),
    ],
)
def test_format_value(value: float, unit: str, text: str) -> None:
    assert core.format_value(value, unit) == text


def test_json_document_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "results" / "latest.json"
    document = core.results_document(_lines(), mode="quick", started=0.0, facts={"cores": 2})
    core.write_json(out, document)
    loaded = json.loads(out.read_text())
    assert loaded["mode"] == "quick"
    assert loaded["machine"] == {"cores": 2}
    first, second, third = loaded["results"]
    assert first["ratio"] == pytest.approx(1.25)
    assert first["verdict"] == "MISS"
    assert first["baseline_values"] == [0.002, 0.002]
    assert second["baseline"] is None and second["verdict"] == "PASS"
    assert third == {
        "bench": "stats",
        "skipped": "not available yet: kvmgr.services.stats is missing",
    }


# ------------------------------------------------------------------ driver file
def test_driver_xml_marks_all_but_every_nth_domain_shut_off() -> None:
    node = etree.fromstring(driver_xml(8, running_every=4))
    domains = node.findall("domain")
    assert [dom.findtext("name") for dom in domains] == [domain_name(i) for i in range(8)]
    shut_off = [dom.find(f"{{{TEST_NS}}}runstate") is not None for dom in domains]
    assert shut_off == [False, True, True, True, False, True, True, True]


def test_driver_xml_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="negative"):
        driver_xml(-1)


def test_test_driver_loads_the_generated_file(tmp_path: Path) -> None:
    uri = write_driver_file(tmp_path / "node.xml", 10, running_every=5)
    conn = libvirt.open(uri)
    try:
        domains = conn.listAllDomains(0)
        running = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        assert len(domains) == 10
        assert sorted(dom.name() for dom in running) == [domain_name(0), domain_name(5)]
    finally:
        conn.close()


def test_empty_driver_file_is_an_empty_host(tmp_path: Path) -> None:
    conn = libvirt.open(write_driver_file(tmp_path / "empty.xml", 0))
    try:
        assert conn.listAllDomains(0) == []
    finally:
        conn.close()


# ------------------------------------------------------------------ counting proxy
def test_counting_proxy_counts_connection_and_domain_calls() -> None:
    conn = libvirt.open("test:///default")
    try:
        log = CallLog()
        counted = CountingConnection(conn, log)
        records = counted.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0)
        dom, _stats = records[0]
        assert isinstance(dom, CountingDomain)
        assert dom.name() == "test"
        dom.info()
        assert log.remote == {"virConnect.getAllDomainStats": 1, "virDomain.info": 1}
        assert log.local == {"virDomain.name": 1}
        assert log.remote_total == 2
        log.reset()
        assert log.remote_total == 0
    finally:
        conn.close()
