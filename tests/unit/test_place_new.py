"""``vm create --host auto``: placement asks every registered host what the new VM would need
there (kvmgr.control.placement.place_new), on test:/// driver files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.driverfile import driver_xml
from lxml import etree

from kvmgr.control.hosts import HostRegistry, close_connections
from kvmgr.control.placement import place_new
from kvmgr.errors import InvalidInput, InvalidState
from kvmgr.services.create import VMSpec
from kvmgr.store.db import Store
from kvmgr.units import MIB

NETWORK = """<network><name>default</name><bridge name='virbr{n}'/>
<ip address='192.168.{n}.1' netmask='255.255.255.0'/></network>"""


def driver_file(path: Path, *, with_default_network: bool) -> str:
    node = etree.fromstring(driver_xml(2))
    if with_default_network:
        node.append(etree.fromstring(NETWORK.format(n=100 + len(path.stem))))
    path.write_bytes(etree.tostring(node))
    return f"test://{path.resolve()}"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[HostRegistry]:
    store = Store(f"sqlite:///{tmp_path / 'kvmgr.db'}")
    registry = HostRegistry(store)
    registry.add("nonet", driver_file(tmp_path / "a.xml", with_default_network=False))
    registry.add("ok", driver_file(tmp_path / "bb.xml", with_default_network=True),
                 labels={"zone": "b"})  # fmt: skip
    registry.add("maint", driver_file(tmp_path / "ccc.xml", with_default_network=True))
    registry.set("maint", maintenance=True)
    yield registry
    close_connections()
    store.dispose()


def test_the_host_that_has_what_the_vm_needs_is_chosen(registry: HostRegistry) -> None:
    spec = VMSpec(name="placed-1", iso=None, os="generic", memory=256 * MIB, vcpus=1)
    chosen, verdicts = place_new(registry, spec)
    assert chosen == "ok"
    why = {v.host: v.reason for v in verdicts}
    assert why["nonet"] == "network 'default' does not exist"
    assert why["maint"] == "in maintenance"
    assert verdicts[0].eligible and "MiB free after" in why["ok"]


def test_a_taken_name_or_a_missing_label_rules_a_host_out(registry: HostRegistry) -> None:
    taken = VMSpec(name="t-bench-00001", iso=None, os="generic", memory=256 * MIB)
    with pytest.raises(InvalidState, match="no host can take VM t-bench-00001") as err:
        place_new(registry, taken)
    assert "already" in str(err.value) and "in maintenance" in str(err.value)
    spec = VMSpec(name="placed-2", iso=None, os="generic", memory=256 * MIB)
    with pytest.raises(InvalidState, match="needs label zone=c, has zone=b"):
        place_new(registry, spec, require={"zone": "c"})


def test_auto_is_not_a_host_name(registry: HostRegistry, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="placement choose"):
        registry.add("auto", driver_file(tmp_path / "d.xml", with_default_network=True))
