"""Room to grow live (the default ceilings), the state reasons shown for a crashed QEMU, and the
words of a vCPU unplug that failed.  The same on the real daemon: tests/integration/
test_live_changes.py."""

from __future__ import annotations

from collections.abc import Iterator

import libvirt
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.osinfo import generic_profile, get_profile
from kvmgr.services import vms
from kvmgr.services.create import VMSpec, build_domain
from kvmgr.services.create_policy import MEMORY_ROOM, default_ceilings
from kvmgr.services.live_errors import qemu_errors, unplug_failed
from kvmgr.units import GIB, MIB


def _rule(vcpus: int = 1, memory: int = GIB, **host: object) -> tuple[int, int]:
    facts: dict[str, object] = {
        "host_cpus": 8,
        "host_memory": 32 * GIB,
        "cpu_hotplug": True,
        "balloon": True,
    }
    facts.update(host)
    ceilings = default_ceilings(vcpus=vcpus, memory=memory, **facts)  # type: ignore[arg-type]
    return ceilings.vcpus, ceilings.memory


def test_a_modern_guest_can_grow_to_the_host_cpus_and_twice_its_memory() -> None:
    assert MEMORY_ROOM == 2
    assert _rule(vcpus=1, memory=GIB) == (8, 2 * GIB)
    assert _rule(vcpus=3, memory=3 * GIB) == (8, 6 * GIB)


def test_the_ceilings_never_fall_below_what_the_vm_has() -> None:
    # more vCPUs than the host has CPUs (allowed up to 8x) keep their count as the maximum
    assert _rule(vcpus=12, memory=GIB)[0] == 12
    # the memory room stops at the host's memory, but never below the VM's memory
    assert _rule(memory=20 * GIB)[1] == 32 * GIB
    assert _rule(memory=40 * GIB)[1] == 40 * GIB


def test_legacy_and_balloonless_guests_get_no_room() -> None:
    # the old OSes of the 'pc' machine take no hot-plugged CPUs; a guest without a virtio
    # balloon driver would keep the whole memory ceiling
    assert _rule(vcpus=2, cpu_hotplug=False, balloon=False) == (2, GIB)


@pytest.fixture
def conn() -> Iterator[Connection]:
    connection = open_connection("test:///default")
    yield connection
    connection.close()


@pytest.mark.parametrize(
    ("os_id", "room"), [("debian12", True), ("generic", True), ("winxp", False)]
)
def test_the_definition_built_carries_the_rule(conn: Connection, os_id: str, room: bool) -> None:
    profile = generic_profile() if os_id == "generic" else get_profile(os_id)
    spec = VMSpec(name="t-live-rule", memory=512 * MIB, vcpus=1, disks=[], nics=[])
    domain = build_domain(conn, spec, profile, "kvm", 512 * MIB, 1, None, [], [])
    host_cpus = conn.virconn.getInfo()[2]
    assert domain.current_memory_bytes == 512 * MIB
    assert domain.memory_bytes == (1024 * MIB if room else 512 * MIB)
    assert (domain.vcpus, domain.vcpus_current or domain.vcpus) == (
        (host_cpus, 1) if room else (1, 1)
    )
    # what the user gives wins over the rule
    spec.max_memory, spec.max_vcpus = 768 * MIB, 2
    domain = build_domain(conn, spec, profile, "kvm", 512 * MIB, 1, None, [], [])
    assert (domain.memory_bytes, domain.vcpus) == (768 * MIB, 2)


def test_only_reasons_worth_telling_are_shown() -> None:
    crashed = vms.state_reason(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED)
    assert vms.describe_state("shut off", crashed) == "shut off (crashed)"
    assert vms.state_reason(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR)
    for state, reason in (
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED),
        (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER),
    ):
        assert vms.state_reason(state, reason) is None
        assert vms.describe_state("running", None) == "running"


def test_list_and_info_carry_the_reason(conn: Connection) -> None:
    dom = conn.virconn.lookupByName("test")  # the test driver's running VM
    dom.destroy()
    try:
        row = next(row for row in vms.list_vms(conn) if row.name == "test")
        assert (row.state, row.state_reason) == ("shut off", None)  # destroyed: ordinary
        assert "state_reason" in row.as_dict()
        assert vms.vm_info(conn, "test")["state_reason"] is None
    finally:
        dom.create()


def test_an_ordinary_failure_is_not_called_a_crash(conn: Connection) -> None:
    dom = conn.virconn.lookupByName("test")
    with pytest.raises(Exception) as caught, qemu_errors(dom, "setting the vCPUs (live)"):
        dom.setVcpusFlags(64, libvirt.VIR_DOMAIN_AFFECT_LIVE)  # above its maximum: refused
    assert "crashed" not in str(caught.value)
    assert str(caught.value).startswith("setting the vCPUs (live) failed:")


def test_a_timed_out_unplug_says_what_happened_and_what_to_do() -> None:
    libvirt.virResetLastError()  # the error takes libvirt's last one when there is one
    err = libvirt.libvirtError(
        "vcpu unplug request timed out. Unplug result must be manually inspected in the domain"
    )
    failure = unplug_failed("web01", 2, 1, err)
    assert failure.message.startswith(
        "VM 'web01' did not give back a vCPU (asked for 1 of its 2): the guest did not release "
        "it within libvirt's 5 s"
    )
    assert "\n" not in failure.message
    assert "kvmgr vm set web01 --config --vcpus 1" in (failure.hint or "")
