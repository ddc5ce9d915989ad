"""Issue 11: every memory unit libvirt accepts parses, and an unknown one is InvalidInput."""

from __future__ import annotations

import pytest

from kvmgr.errors import InvalidInput
from kvmgr.units import parse_size
from kvmgr.xml.capabilities import Capabilities
from kvmgr.xml.domain import Domain

# Every unit https://libvirt.org/formatdomain.html#memory-allocation lists, in bytes.
LIBVIRT_UNITS = {
    "b": 1, "bytes": 1,
    "k": 1024, "KiB": 1024, "KB": 1000,
    "M": 1024**2, "MiB": 1024**2, "MB": 1000**2,
    "G": 1024**3, "GiB": 1024**3, "GB": 1000**3,
    "T": 1024**4, "TiB": 1024**4, "TB": 1000**4,
    "P": 1024**5, "PiB": 1024**5, "PB": 1000**5,
    "E": 1024**6, "EiB": 1024**6, "EB": 1000**6,
}  # fmt: skip


def _domain(memory: str, unit: str | None) -> Domain:
    unit_attr = "" if unit is None else f" unit='{unit}'"
    return Domain.from_xml(
        f"<domain type='kvm'><name>t</name><memory{unit_attr}>{memory}</memory></domain>"
    )


@pytest.mark.parametrize(("unit", "factor"), sorted(LIBVIRT_UNITS.items()))
def test_every_libvirt_memory_unit_parses(unit: str, factor: int) -> None:
    assert _domain("2", unit).memory_bytes == 2 * factor
    assert _domain("2", unit.upper()).memory_bytes == 2 * factor
    assert _domain("2", unit.lower()).memory_bytes == 2 * factor


def test_memory_without_unit_is_kib() -> None:
    assert _domain("4096", None).memory_bytes == 4096 * 1024
    assert _domain("4096", "").memory_bytes == 4096 * 1024


@pytest.mark.parametrize("unit", ["X", "KiBB", "Z", "ZiB", "gigs"])
def test_unknown_memory_unit_is_invalid_input_listing_units(unit: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        _ = _domain("2", unit).memory_bytes
    message = str(caught.value)
    assert "memory" in message
    assert "PiB" in message
    assert "EB" in message


@pytest.mark.parametrize("text", ["1.5", "abc", "-1", "٣"])
def test_non_integer_memory_is_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput):
        _ = _domain(text, "GiB").memory_bytes


def test_capabilities_accept_every_unit_and_reject_unknown() -> None:
    caps = Capabilities.from_xml(
        "<capabilities><host><cpu><pages unit='MiB' size='2'/><pages unit='G' size='1'/>"
        "</cpu><topology><cells num='2'>"
        "<cell id='0'><memory unit='TiB'>1</memory></cell>"
        "<cell id='1'><memory unit='P'>1</memory></cell>"
        "</cells></topology></host></capabilities>"
    )
    assert [p.size_kib for p in caps.page_sizes] == [2048, 1024**2]
    assert [c.memory_kib for c in caps.cells] == [1024**3, 1024**4]
    bad = Capabilities.from_xml(
        "<capabilities><host><cpu><pages unit='Q' size='4'/></cpu></host></capabilities>"
    )
    with pytest.raises(InvalidInput, match="PiB"):
        _ = bad.page_sizes[0].size_kib


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1P", 1024**5), ("1PiB", 1024**5), ("2PB", 2 * 1000**5), ("1E", 1024**6), ("1EB", 1000**6)],
)
def test_cli_sizes_accept_peta_and_exa(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["2X", "5ZiB", "1" + "0" * 400, "1" + "0" * 400 + "G", "2E"])
def test_cli_bad_sizes_are_invalid_input_not_tracebacks(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_size(text, what="memory")


def test_cli_unknown_default_unit_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="EiB"):
        parse_size(4, default_unit="Q")
