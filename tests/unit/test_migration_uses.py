"""A move holds on the destination what the VM's definition there names (services.migration.
use_destination): its network, pool and new volume, looked up again, so a delete on the
destination since the preflight fails the move instead of landing the VM on a missing network.

Two test:/// hosts (a driver file each); the uses are recorded by a Steps that keeps them.  That
a use refuses a delete from another process is tests/unit/test_object_uses.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmgr.connect import Connection
from kvmgr.errors import NotFound
from kvmgr.services.migration import use_destination
from kvmgr.services.steps import LocalSteps
from tests.testdriver import private_hosts

IMAGES = "/images"
_POOL = f"""<pool type='dir'><name>default</name>
<capacity unit='GiB'>100</capacity><available unit='GiB'>90</available>
<target><path>{IMAGES}</path></target></pool>"""
_NET = """<network><name>lan</name><bridge name='virbr9'/><forward mode='nat'/>
<ip address='192.168.99.1' netmask='255.255.255.0'/></network>"""
_DOMAIN = f"""<domain type='test'><name>web</name>
<memory unit='MiB'>128</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='{IMAGES}/web.qcow2'/><target dev='vda' bus='virtio'/></disk>
<interface type='network'><source network='lan'/></interface></devices></domain>"""


class KeepsUses(LocalSteps):
    def __init__(self) -> None:
        super().__init__()
        self.used: list[tuple[str, ...]] = []

    def uses(self, kind: str, *names: str) -> None:
        self.used.append((kind, *names))


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Connection, Connection]]:
    with private_hosts(tmp_path, f"<node>{_POOL}{_NET}</node>") as (src, dst):
        for conn in (src, dst):  # the source's disk, and the volume the move made there
            conn.virconn.storagePoolLookupByName("default").createXML(
                "<volume><name>web.qcow2</name><capacity unit='MiB'>64</capacity>"
                "<target><format type='qcow2'/></target></volume>",
                0,
            )
        src.virconn.defineXML(_DOMAIN)
        yield src, dst


@pytest.mark.parametrize("live", [False, True])
def test_the_network_pool_and_new_volume_are_held_on_the_destination(
    hosts: tuple[Connection, Connection], live: bool
) -> None:
    src, dst = hosts
    steps = KeepsUses()
    dom = src.virconn.lookupByName("web")
    use_destination(dst, dom, {"vda": f"{IMAGES}/web.qcow2"}, steps, live=live)
    assert set(steps.used) == {
        ("network", "lan"),
        ("pool", "default"),
        ("volume", "default", "web.qcow2"),
    }


def test_a_network_deleted_on_the_destination_since_the_preflight_fails_the_move(
    hosts: tuple[Connection, Connection],
) -> None:
    src, dst = hosts
    net = dst.virconn.networkLookupByName("lan")
    net.destroy()
    net.undefine()
    steps = KeepsUses()
    with pytest.raises(NotFound, match="network 'lan' does not exist"):
        use_destination(dst, src.virconn.lookupByName("web"), {}, steps, live=False)
    assert ("network", "lan") in steps.used  # held first, then found missing
