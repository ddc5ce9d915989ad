"""``host info`` and the capabilities XML model on libvirt's test driver (a real libvirt driver)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.host.info import host_info
from kvmgr.xml.capabilities import Capabilities, DomainCapabilities


@pytest.fixture
def conn() -> Iterator[Connection]:
    with open_connection("test:///default") as connection:
        yield connection


def test_capabilities_model_reads_topology_and_pages(conn: Connection) -> None:
    caps = Capabilities.from_xml(conn.virconn.getCapabilities())
    assert [cell.id for cell in caps.cells] == [0, 1]
    assert [len(cell.cpus) for cell in caps.cells] == [8, 8]
    assert caps.cells[0].memory_kib == 2 * 1024 * 1024
    assert 2048 in [p.size_kib for p in caps.page_sizes]
    assert caps.guests[0].os_type == "hvm"
    assert [d.type for d in caps.guests[0].domains] == ["test"]


def test_domain_capabilities_model_reads_enums_and_limits() -> None:
    xml = (
        "<domainCapabilities><path>/usr/bin/qemu-system-x86_64</path><domain>kvm</domain>"
        "<machine>pc-q35-7.2</machine><arch>x86_64</arch><vcpu max='288'/>"
        "<os supported='yes'><enum name='firmware'><value>efi</value></enum>"
        "<loader supported='yes'><value>/usr/share/OVMF/OVMF_CODE_4M.fd</value>"
        "<enum name='secure'><value>yes</value><value>no</value></enum></loader></os>"
        "<cpu><mode name='host-passthrough' supported='yes'/></cpu></domainCapabilities>"
    )
    caps = DomainCapabilities.from_xml(xml)
    assert (caps.machine, caps.vcpu_max, caps.domain) == ("pc-q35-7.2", 288, "kvm")
    assert caps.firmware == ["efi"]
    assert [loader.text for loader in caps.loaders] == ["/usr/share/OVMF/OVMF_CODE_4M.fd"]
    assert caps.enum("os/loader", "secure") == ["yes", "no"]
    assert caps.enum("os", "missing") == []
    assert caps.cpu_mode_supported("host-passthrough")
    assert not caps.cpu_mode_supported("maximum")


def test_host_info_on_the_test_driver(conn: Connection) -> None:
    info = host_info(conn)
    assert info["domain_type"] == "test"
    assert info["cpus"] == 16
    assert info["numa_cells"] == [
        {"id": 0, "cpus": 8, "memory": "2 GiB", "free": "2 MiB"},
        {"id": 1, "cpus": 8, "memory": "4 GiB", "free": "4 MiB"},
    ]
    sizes = {row["size"]: row["reserved"] for row in info["hugepages"]}
    assert sizes["2 MiB"] == 0 and sizes["1 GiB"] == 0
    assert "4 KiB" not in sizes  # the base page is no hugepage
    assert "max_vcpus" not in info  # the test driver has no domain capabilities
