"""vCPU/memory changes, device validation and rollback on libvirt's test driver.

The test driver really applies setVcpusFlags/setMemoryFlags, so the scope rules and ceilings are
checked against what libvirt then reports.  It cannot attach or detach devices, so attaching a
disk there fails for real, which is how the rollback of a new volume is proven here; the device
changes themselves are proven on a real daemon in tests/integration/test_resources.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import (
    AlreadyExists,
    InvalidInput,
    InvalidState,
    NotFound,
    OperationFailed,
    Unsupported,
)
from kvmgr.services import resources
from kvmgr.services.storage import find_volume_by_path
from kvmgr.units import MIB
from kvmgr.xml.domain import Domain

NODE_XML = """<node>
  <pool type='dir'>
    <name>default</name>
    <capacity unit='bytes'>107374182400</capacity>
    <allocation unit='bytes'>0</allocation>
    <available unit='bytes'>107374182400</available>
    <target><path>/t-cfg-pool</path></target>
    <volume type='file'>
      <name>t-cfg-vm-vda.qcow2</name>
      <capacity unit='bytes'>67108864</capacity>
      <target><path>/t-cfg-pool/t-cfg-vm-vda.qcow2</path><format type='qcow2'/></target>
    </volume>
  </pool>
  <network>
    <name>default</name>
    <bridge name='t-cfg-br0'/>
    <ip address='192.168.250.1' netmask='255.255.255.0'/>
  </network>
</node>
"""

VM_XML = """<domain type='test'>
  <name>{name}</name>
  <metadata>
    <other:app xmlns:other="https://example.org/other"><other:keep>yes</other:keep></other:app>
    <kvmgr:vm xmlns:kvmgr="https://kvmgr.dev/xmlns/kvmgr/1.0">
      <kvmgr:volumes><kvmgr:volume>/t-cfg-pool/t-cfg-vm-vda.qcow2</kvmgr:volume></kvmgr:volumes>
    </kvmgr:vm>
  </metadata>
  <memory unit='MiB'>512</memory>
  <currentMemory unit='MiB'>256</currentMemory>
  <vcpu current='1'>2</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/t-cfg-pool/t-cfg-vm-vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/srv/not-ours.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:01'/>
      <source network='default'/>
      <model type='e1000e'/>
    </interface>
  </devices>
</domain>
"""


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    connection = open_connection(f"test://{node}")
    yield connection
    connection.close()


@pytest.fixture
def running(conn: Connection) -> str:
    """A persistent, running VM."""
    conn.virconn.defineXML(VM_XML.format(name="t-cfg-run")).create()
    return "t-cfg-run"


@pytest.fixture
def stopped(conn: Connection) -> str:
    """A persistent VM that is shut off."""
    conn.virconn.defineXML(VM_XML.format(name="t-cfg-off"))
    return "t-cfg-off"


def _inactive(conn: Connection, name: str) -> Domain:
    dom = conn.virconn.lookupByName(name)
    return Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


# ----------------------------------------------------------------------------- scope
def test_default_scope_is_live_and_config_when_running_and_config_when_off(
    conn: Connection, running: str, stopped: str
) -> None:
    on = conn.virconn.lookupByName(running)
    off = conn.virconn.lookupByName(stopped)
    assert resources.resolve_scope(on) == resources.Scope(live=True, config=True)
    assert resources.resolve_scope(off) == resources.Scope(live=False, config=True)
    assert resources.resolve_scope(on, live=True).flags == libvirt.VIR_DOMAIN_AFFECT_LIVE
    with pytest.raises(InvalidState, match="not running"):
        resources.resolve_scope(off, live=True)


def test_a_transient_vm_has_no_definition_to_change(conn: Connection) -> None:
    dom = conn.virconn.createXML(VM_XML.format(name="t-cfg-transient"), 0)
    assert resources.resolve_scope(dom) == resources.Scope(live=True, config=False)
    with pytest.raises(InvalidState, match="transient"):
        resources.resolve_scope(dom, config=True)


# ----------------------------------------------------------------------------- vCPUs, memory
def test_set_vcpus_and_memory_live_and_config(conn: Connection, running: str) -> None:
    result = resources.set_resources(conn, running, vcpus=2, memory=384 * MIB)
    assert (result.vcpus_live, result.vcpus_config, result.max_vcpus) == (2, 2, 2)
    assert (result.memory_live, result.memory_config) == (384 * MIB, 384 * MIB)
    assert result.max_memory == 512 * MIB


def test_live_only_change_leaves_the_definition(conn: Connection, running: str) -> None:
    result = resources.set_resources(conn, running, vcpus=2, live=True)
    assert (result.vcpus_live, result.vcpus_config) == (2, 1)


def test_vcpus_above_the_maximum_say_the_maximum_and_change_nothing(
    conn: Connection, running: str
) -> None:
    before = resources.resources(conn, running)
    with pytest.raises(InvalidInput, match="maximum of 2") as caught:
        resources.set_resources(conn, running, vcpus=3, memory=300 * MIB)
    assert "--max-vcpus" in (caught.value.hint or "")
    assert resources.resources(conn, running) == before


def test_memory_above_the_ceiling_says_the_ceiling(conn: Connection, running: str) -> None:
    with pytest.raises(InvalidInput, match="ceiling of 512 MiB") as caught:
        resources.set_resources(conn, running, memory=1024 * MIB)
    assert "--max-memory" in (caught.value.hint or "")
    with pytest.raises(InvalidInput, match="too small"):
        resources.set_resources(conn, running, memory=16 * MIB)
    with pytest.raises(InvalidInput, match="nothing to change"):
        resources.set_resources(conn, running)


def test_maximums_change_only_in_the_definition_of_a_stopped_vm(
    conn: Connection, running: str, stopped: str
) -> None:
    with pytest.raises(InvalidState, match="fixed while a VM runs"):
        resources.set_resources(conn, running, max_vcpus=4)
    result = resources.set_resources(
        conn, stopped, max_vcpus=4, vcpus=3, max_memory=1024 * MIB, memory=768 * MIB
    )
    assert (result.vcpus_config, result.max_vcpus) == (3, 4)
    assert (result.memory_config, result.max_memory) == (768 * MIB, 1024 * MIB)
    assert result.vcpus_live is None and result.memory_live is None
    with pytest.raises(InvalidInput, match="below the VM's 3 vCPUs"):
        resources.set_resources(conn, stopped, max_vcpus=2)
    with pytest.raises(InvalidInput, match="below the VM's memory"):
        resources.set_resources(conn, stopped, max_memory=512 * MIB)


def test_set_keeps_everything_else_in_the_definition(conn: Connection, stopped: str) -> None:
    before = _inactive(conn, stopped)
    resources.set_resources(conn, stopped, vcpus=2)
    assert resources.resources(conn, stopped).vcpus_config == 2
    after = _inactive(conn, stopped)
    after.vcpus_current = before.vcpus_current
    assert after.to_xml() == before.to_xml()


# ----------------------------------------------------------------------------- disks
def test_a_new_volume_is_deleted_when_attaching_fails(conn: Connection, running: str) -> None:
    # The test driver cannot attach devices: a real failure after the volume was created.
    with pytest.raises(Unsupported, match="attaching disk vdc"):
        resources.add_disk(conn, running, size=64 * MIB)
    assert find_volume_by_path(conn, "/t-cfg-pool/t-cfg-run-vdc.qcow2") is None
    assert conn.virconn.storagePoolLookupByName("default").listVolumes() == ["t-cfg-vm-vda.qcow2"]


def test_disk_requests_are_checked_before_anything_is_made(conn: Connection, running: str) -> None:
    with pytest.raises(InvalidInput, match="either --size"):
        resources.add_disk(conn, running)
    with pytest.raises(InvalidInput, match="either --size"):
        resources.add_disk(conn, running, size=MIB, path="/x.img")
    with pytest.raises(InvalidInput, match="bus"):
        resources.add_disk(conn, running, size=MIB, bus="floppy")
    with pytest.raises(NotFound, match="not a volume"):
        resources.add_disk(conn, running, path="/srv/unknown.img")
    assert conn.virconn.storagePoolLookupByName("default").numOfVolumes() == 1


def test_removing_an_unknown_disk_lists_the_disks(conn: Connection, running: str) -> None:
    with pytest.raises(NotFound, match="no disk 'vdz'") as caught:
        resources.remove_disk(conn, running, "vdz")
    assert caught.value.hint == "its disks are vda, vdb"


def test_only_volumes_kvmgr_created_are_deleted(conn: Connection, stopped: str) -> None:
    with pytest.raises(InvalidInput, match="not created by kvmgr"):
        resources.remove_disk(conn, stopped, "vdb", delete_volume=True)
    assert len(_inactive(conn, stopped).devices.disks) == 2


def test_resize_refuses_to_shrink(conn: Connection, stopped: str) -> None:
    with pytest.raises(InvalidInput, match="does not shrink"):
        resources.resize_disk(conn, stopped, "vda", 32 * MIB)
    unchanged = resources.resize_disk(conn, stopped, "vda", 64 * MIB)
    assert unchanged.capacity == 64 * MIB and unchanged.owned
    with pytest.raises(InvalidInput, match="not a volume of any storage pool"):
        resources.resize_disk(conn, stopped, "vdb", 64 * MIB)


def test_owned_volume_record_keeps_other_metadata(conn: Connection, stopped: str) -> None:
    dom = conn.virconn.lookupByName(stopped)
    resources._set_owned_volumes(dom, ["/t-cfg-pool/t-cfg-vm-vda.qcow2", "/t-cfg-pool/new"])
    spec = _inactive(conn, stopped)
    meta = spec.kvmgr_metadata()
    assert meta is not None
    assert meta.owned_volumes == ["/t-cfg-pool/t-cfg-vm-vda.qcow2", "/t-cfg-pool/new"]
    keep = spec.element.find("./metadata/{https://example.org/other}app/")
    assert keep is not None and keep.text == "yes"


# ----------------------------------------------------------------------------- NICs
def test_nic_requests_are_checked(conn: Connection, running: str, stopped: str) -> None:
    with pytest.raises(InvalidInput, match="either --network or --bridge"):
        resources.add_nic(conn, running)
    with pytest.raises(InvalidInput, match="model"):
        resources.add_nic(conn, running, network="default", model="ne2k")
    with pytest.raises(NotFound, match="network 't-cfg-nonet'"):
        resources.add_nic(conn, running, network="t-cfg-nonet")
    with pytest.raises(AlreadyExists, match="used by VM 't-cfg-"):
        resources.add_nic(conn, running, network="default", mac="52:54:00:AA:BB:01")
    with pytest.raises(InvalidInput, match="not valid"):
        resources.add_nic(conn, running, network="default", mac="52:54:00:zz")


def test_removing_an_unknown_nic_lists_the_macs(conn: Connection, running: str) -> None:
    with pytest.raises(NotFound, match="no NIC with MAC 52:54:00:00:00:09") as caught:
        resources.remove_nic(conn, running, "52-54-00-00-00-09")
    assert caught.value.hint == "its NICs are 52:54:00:aa:bb:01"


def test_fresh_macs_are_unicast_qemu_macs_nobody_uses(conn: Connection, running: str) -> None:
    macs = {resources._choose_mac(conn, None) for _ in range(20)}
    assert all(mac.startswith("52:54:00:") and len(mac) == 17 for mac in macs)
    assert "52:54:00:aa:bb:01" not in macs


# ----------------------------------------------------------------------------- addresses
def test_addresses_name_their_source(conn: Connection) -> None:
    # The test driver's built-in network answers DHCP lease queries for its own VM 'test'.
    default = open_connection("test:///default")
    try:
        found = resources.addresses(default, "test")
        assert found and all(item["source"] == "lease" for item in found)
        default.virconn.lookupByName("test").destroy()
        with pytest.raises(InvalidState, match="not running"):
            resources.addresses(default, "test")
    finally:
        default.virconn.lookupByName("test").create()
        default.close()


def test_a_raised_maximum_does_not_apply_to_the_running_guest(
    conn: Connection, running: str
) -> None:
    result = resources.set_resources(conn, running, max_vcpus=4, vcpus=3, config=True)
    assert (result.vcpus_config, result.max_vcpus, result.vcpus_live) == (3, 4, 1)
    with pytest.raises(InvalidInput, match="running guest's maximum of 2") as caught:
        resources.set_resources(conn, running, vcpus=4)
    assert "next boot" in (caught.value.hint or "")
    assert resources.resources(conn, running).vcpus_config == 3


def test_a_failed_step_puts_back_the_earlier_ones(conn: Connection, running: str) -> None:
    dom = conn.virconn.lookupByName(running)
    changes = resources._Changes(dom)
    changes.apply(
        "the vCPUs (config)", lambda n: dom.setVcpusFlags(n, libvirt.VIR_DOMAIN_AFFECT_CONFIG), 2, 1
    )
    assert resources.resources(conn, running).vcpus_config == 2
    # libvirt itself refuses 64 vCPUs for a guest whose maximum is 2.
    with pytest.raises(InvalidInput, match="vCPUs \\(live\\)"):
        changes.apply(
            "the vCPUs (live)",
            lambda n: dom.setVcpusFlags(n, libvirt.VIR_DOMAIN_AFFECT_LIVE),
            64,
            1,
        )
    assert resources.resources(conn, running).vcpus_config == 1


def test_a_device_the_guest_keeps_is_reported_after_the_timeout(
    conn: Connection, running: str
) -> None:
    dom = conn.virconn.lookupByName(running)
    naps: list[float] = []
    with pytest.raises(OperationFailed, match=r"did not release disk vda within 0\.5 s") as caught:
        resources._wait_removed(
            dom,
            lambda domain: resources._find_disk(domain, "vda") is not None,
            "disk vda",
            0.5,
            sleep=lambda seconds: (naps.append(seconds), time.sleep(seconds)),
        )
    assert "hot-unplug" in (caught.value.hint or "")
    assert naps  # it polled the live definition more than once before giving up


# ----------------------------------------------------------------------------- CLI
def test_cli_set_reports_the_ceiling_and_exits_1(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kvmgr.cli.common import state
    from kvmgr.cli.main import app

    try:
        runner = CliRunner()
        result = runner.invoke(app, ["-c", "test:///default", "vm", "set", "test", "--vcpus", "9"])
        assert result.exit_code == 1
        assert "above the maximum of 2" in result.output and "--max-vcpus" in result.output
        result = runner.invoke(
            app, ["-c", "test:///default", "vm", "set", "test", "--vcpus", "1", "-o", "json"]
        )
        assert result.exit_code == 0 and '"vcpus_live": 1' in result.output
        result = runner.invoke(app, ["-c", "test:///default", "vm", "ip", "test", "-o", "json"])
        assert result.exit_code == 0 and '"source": "lease"' in result.output
    finally:
        state.close()
