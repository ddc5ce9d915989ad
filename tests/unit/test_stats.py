"""Rates from two samples (pure), parsing of libvirt's bulk records, and the number of libvirt
calls and sleeps a sample costs (counted on the real test driver)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import InvalidInput, NotFound
from kvmgr.services import stats
from kvmgr.services.stats import StatsSample, VMCounters, compute_rates

# Keys as libvirt's getAllDomainStats names them for a running QEMU guest with a virtio disk, a
# cdrom and one NIC (values chosen for easy arithmetic; units: KiB for balloon, ns, bytes).
RECORD = {
    "state.state": 1,
    "state.reason": 1,
    "cpu.time": 12_000_000_000,
    "vcpu.current": 2,
    "vcpu.maximum": 2,
    "balloon.current": 262144,
    "balloon.maximum": 524288,
    "balloon.available": 250000,
    "balloon.usable": 200000,
    "balloon.unused": 180000,
    "block.count": 2,
    "block.0.name": "vda",
    "block.0.rd.bytes": 1000,
    "block.0.wr.bytes": 4000,
    "block.1.name": "sda",
    "block.1.rd.bytes": 500,
    "net.count": 1,
    "net.0.name": "vnet3",
    "net.0.rx.bytes": 7000,
    "net.0.tx.bytes": 3000,
}


def _counters(**changes: object) -> VMCounters:
    base = stats.counters_from_record("t-cfg-a", RECORD)
    return VMCounters(**{**base.__dict__, **changes})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- parsing
def test_a_record_becomes_counters_in_bytes_summed_over_devices() -> None:
    counters = stats.counters_from_record("t-cfg-a", RECORD)
    assert counters.state == "running"
    assert (counters.vcpus, counters.cpu_time_ns) == (2, 12_000_000_000)
    assert counters.memory_current == 262144 * 1024
    assert (counters.disk_read_bytes, counters.disk_write_bytes) == (1500, 4000)
    assert (counters.net_rx_bytes, counters.net_tx_bytes) == (7000, 3000)


def test_a_shut_off_vm_has_no_counters() -> None:
    counters = stats.counters_from_record("t-cfg-off", {"state.state": 5, "state.reason": 2})
    assert counters.state == "shut off"
    assert counters.cpu_time_ns is None and counters.disk_read_bytes is None


# ----------------------------------------------------------------------------- rates
def test_a_shut_off_vm_has_no_rates_whatever_libvirt_counts() -> None:
    # what libvirt 9.0 answered for a defined VM that never ran, a second apart
    record = {"state.state": 5, "state.reason": 0, "cpu.time": 26_750_000_000,
              "balloon.current": 65536, "block.count": 1, "block.0.name": "sda"}  # fmt: skip
    prev = stats.counters_from_record("t-cfg-off", record)
    curr = stats.counters_from_record("t-cfg-off", {**record, "cpu.time": 27_750_000_000})
    rates = compute_rates(prev, curr, 1.0)
    assert rates.cpu_percent is None and rates.disk_read_bps is None
    assert rates.memory_total == 64 * 1024 * 1024  # what it will be given: known while off


def test_rates_are_deltas_over_time() -> None:
    prev = _counters()
    curr = _counters(
        cpu_time_ns=prev.cpu_time_ns + 1_500_000_000,  # type: ignore[operator]
        disk_read_bytes=1500 + 2048,
        disk_write_bytes=4000 + 8192,
        net_rx_bytes=7000 + 1000,
        net_tx_bytes=3000,
    )
    rates = compute_rates(prev, curr, 2.0)
    assert rates.cpu_percent == 75.0  # 1.5 CPU-seconds in 2 s: three quarters of one CPU
    assert (rates.disk_read_bps, rates.disk_write_bps) == (1024.0, 4096.0)
    assert (rates.net_rx_bps, rates.net_tx_bps) == (500.0, 0.0)


def test_memory_use_comes_from_the_guests_balloon_statistics() -> None:
    rates = compute_rates(None, _counters(), 1.0)
    assert (rates.memory_used, rates.memory_total) == (50000 * 1024, 250000 * 1024)
    without_usable = compute_rates(None, _counters(memory_usable=None), 1.0)
    assert without_usable.memory_used == 70000 * 1024  # available - unused
    no_guest_stats = compute_rates(None, _counters(memory_available=None), 1.0)
    assert (no_guest_stats.memory_used, no_guest_stats.memory_total) == (None, 262144 * 1024)


def test_no_rates_without_a_previous_sample_or_after_a_restart() -> None:
    first = compute_rates(None, _counters(), 1.0)
    assert first.cpu_percent is None and first.net_rx_bps is None
    restarted = compute_rates(_counters(), _counters(cpu_time_ns=10, net_rx_bytes=5), 1.0)
    assert restarted.cpu_percent is None and restarted.net_rx_bps is None
    assert restarted.disk_read_bps == 0.0  # unchanged counters are a real zero
    with pytest.raises(InvalidInput):
        compute_rates(_counters(), _counters(), 0.0)


def test_rates_of_samples_cover_vms_that_appeared() -> None:
    old = StatsSample(10.0, {"t-cfg-a": _counters()})
    new_vm = _counters(name="t-cfg-b")
    busier = _counters(cpu_time_ns=_counters().cpu_time_ns + 500_000_000)  # type: ignore[operator]
    new = StatsSample(11.0, {"t-cfg-b": new_vm, "t-cfg-a": busier})
    result = stats.rates(old, new)
    assert [(item.name, item.cpu_percent) for item in result] == [
        ("t-cfg-a", 50.0),
        ("t-cfg-b", None),
    ]


# ----------------------------------------------------------------------------- libvirt calls
class CountingConnection:
    """Forwards to a real ``virConnect`` and counts its method calls.

    Unlike bench.counting it hands back libvirt's own domain objects, which
    ``domainListGetStats`` insists on.
    """

    def __init__(self, target: libvirt.virConnect) -> None:
        self._target = target
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return counted


@pytest.fixture
def counted() -> Iterator[tuple[Connection, Counter[str]]]:
    connection = open_connection("test:///default")
    xml = connection.virconn.lookupByName("test").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    for index in range(3):
        spec = xml.replace("<name>test</name>", f"<name>t-cfg-s{index}</name>")
        spec = spec.replace(spec[spec.index("<uuid>") : spec.index("</uuid>") + 7], "")
        spec = spec.replace("aa:bb:cc:dd:ee:ff", f"52:54:00:00:00:0{index}")
        connection.virconn.defineXML(spec).create()
    real = connection.virconn
    counting = CountingConnection(real)
    connection.virconn = counting  # type: ignore[assignment]
    yield connection, counting.calls
    connection.virconn = real
    for index in range(3):
        dom = real.lookupByName(f"t-cfg-s{index}")
        dom.destroy()
        dom.undefine()
    connection.close()


def test_one_sample_is_one_bulk_call_whatever_the_number_of_vms(
    counted: tuple[Connection, Counter[str]],
) -> None:
    conn, log = counted
    sample = stats.collect(conn)
    assert {"t-cfg-s0", "t-cfg-s1", "t-cfg-s2", "test"} <= set(sample.vms)
    assert log == {"getAllDomainStats": 1}


def test_named_vms_cost_one_listing_and_one_stats_call(
    counted: tuple[Connection, Counter[str]],
) -> None:
    conn, log = counted
    sample = stats.collect(conn, ["t-cfg-s2", "t-cfg-s0"])
    assert sorted(sample.vms) == ["t-cfg-s0", "t-cfg-s2"]
    assert log == {"listAllDomains": 1, "domainListGetStats": 1}
    with pytest.raises(NotFound, match="'t-cfg-nope'"):
        stats.collect(conn, ["t-cfg-s0", "t-cfg-nope"])


def test_rates_for_all_vms_sleep_once(counted: tuple[Connection, Counter[str]]) -> None:
    conn, log = counted
    sleeps: list[float] = []
    result = stats.sample_rates(conn, interval=0.5, sleep=sleeps.append)
    assert sleeps == [0.5]
    assert log == {"getAllDomainStats": 2}
    assert {"t-cfg-s0", "t-cfg-s1", "t-cfg-s2"} <= {item.name for item in result}


def test_devices_beyond_the_precomputed_key_table_are_summed() -> None:
    record: dict[str, Any] = {"state.state": 1, "block.count": 40, "net.count": 0}
    for index in range(40):
        record[f"block.{index}.rd.bytes"] = 10
    counters = stats.counters_from_record("t-cfg-many", record)
    assert counters.disk_read_bytes == 400
    assert counters.disk_write_bytes is None  # no device reported it
    assert (counters.net_rx_bytes, counters.net_tx_bytes) == (0, 0)  # no NICs: zero, known
