"""kvmgr's q35 VMs get the root ports their devices take plus HOTPLUG_PORTS free ones.

Checked against the PCI addresses the real daemon assigns when it defines the VM: a root port
no device sits behind is one a hot-plugged disk or NIC can take.
"""

from __future__ import annotations

import pytest

from kvmgr.connect import Connection
from kvmgr.services import vms
from kvmgr.services.create import HOTPLUG_PORTS, DiskRequest, NicRequest, VMSpec, create_vm
from kvmgr.units import MIB
from kvmgr.xml.domain import Domain
from tests.integration.conftest import Cleanup

pytestmark = pytest.mark.integration

PREFIX = "t-perf2-ports-"


def _free_root_ports(spec: Domain) -> int:
    ports = {c.index for c in spec.devices.controllers if c.model == "pcie-root-port"}
    used = set()
    for element in spec.element.iter("address"):
        if element.get("type") == "pci" and element.get("bus") is not None:
            used.add(int(element.get("bus", "0"), 16))
    return len(ports - used)


@pytest.mark.parametrize(
    ("disks", "nics"),
    [([], []), ([DiskRequest(size=64 * MIB)], [NicRequest()])],
    ids=["no-disk-no-nic", "disk-and-nic"],
)
def test_spare_root_ports(
    conn: Connection, cleanup: Cleanup, disks: list[DiskRequest], nics: list[NicRequest]
) -> None:
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}vm"
    spec = VMSpec(
        name, os="generic", memory=64 * MIB, vcpus=1, disks=disks, nics=nics, graphics="none"
    )
    spec.start = False
    create_vm(conn, spec)
    defined = vms.definition(vms.lookup(conn, name), inactive=True)
    assert defined.os.machine and "q35" in defined.os.machine
    assert _free_root_ports(defined) == HOTPLUG_PORTS
