"""QA of VM creation and lifecycle input on libvirt's test driver: bad input is refused before
anything is made, with one line that says what to fix."""

from __future__ import annotations

from collections.abc import Iterator

import libvirt
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import InvalidInput
from kvmgr.services import vms
from kvmgr.services.create import NicRequest, VMSpec, create_vm, parse_network_option
from kvmgr.units import MIB


@pytest.fixture
def conn() -> Iterator[Connection]:
    connection = open_connection("test:///default")
    yield connection
    connection.close()


def _names(conn: Connection) -> set[str]:
    return {dom.name() for dom in conn.virconn.listAllDomains(0)}


def test_unknown_nic_model_is_refused_at_create_not_at_first_start(conn: Connection) -> None:
    # libvirt defines any model string; QEMU only fails when the VM starts, long after create
    before = _names(conn)
    spec = VMSpec(name="t-qa-nic", memory=256 * MIB, vcpus=1, disks=[], start=False)
    spec.nics = [NicRequest(source="default", model="bogus")]
    with pytest.raises(InvalidInput, match="NIC model 'bogus'"):
        create_vm(conn, spec)
    assert _names(conn) == before


def test_network_option_with_unknown_model_is_refused() -> None:
    with pytest.raises(InvalidInput, match="NIC model 'bogus'"):
        parse_network_option("default,model=bogus")
    request = parse_network_option("default,model=e1000e")
    assert request is not None and request.model == "e1000e"


def test_wait_timeout_must_be_positive(conn: Connection) -> None:
    spec = VMSpec(name="t-qa-wt", memory=256 * MIB, vcpus=1, disks=[], nics=[], wait="ready")
    spec.wait_timeout = -5
    with pytest.raises(InvalidInput, match="wait-timeout"):
        create_vm(conn, spec)
    assert "t-qa-wt" not in _names(conn)


def test_shutdown_with_a_negative_timeout_is_refused_before_the_guest_is_asked(
    conn: Connection,
) -> None:
    with pytest.raises(InvalidInput, match="timeout"):
        vms.shutdown(conn, "test", timeout=-1)
    assert vms.state_of(conn.virconn.lookupByName("test")) == libvirt.VIR_DOMAIN_RUNNING
