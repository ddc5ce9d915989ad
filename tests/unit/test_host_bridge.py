"""Bridge plans without touching a link: iproute2 steps, and golden persistent-backend plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmgr.errors import InvalidInput
from kvmgr.host.bridge import PERSISTENT_BACKENDS, BridgeSpec, backend_for
from kvmgr.host.bridge_ip import (
    Address,
    LinkState,
    Route,
    differences,
    plan_create,
    plan_delete,
    validate_ifname,
)
from kvmgr.host.osrelease import parse_os_release
from tests.golden import check_golden_json

DATA = Path(__file__).parent.parent / "data" / "os-release"

UPLINK = LinkState(
    name="eth0",
    mac="52:54:00:12:34:56",
    up=True,
    master=None,
    kind=None,
    alias=None,
    addresses=(
        Address("inet", "10.231.7.10/24", "10.231.7.255"),
        Address("inet6", "fd31:231::10/64"),
    ),
    routes=(
        Route("inet", "default", "10.231.7.1"),
        Route("inet", "10.231.60.0/24", "10.231.7.254", metric=5),
    ),
)
DHCP_UPLINK = LinkState(
    "ens3",
    "52:54:00:ab:cd:ef",
    True,
    None,
    None,
    None,
    (Address("inet", "10.231.8.20/24", dynamic=True),),
    (Route("inet", "default", "10.231.8.1", metric=100, protocol="dhcp"),),
)

# Which backend each fixture distribution uses (EL8/9: NetworkManager).
EXPECTED_BACKEND = {
    "centos-7": "ifcfg",
    "almalinux-8": "nmcli",
    "rocky-9": "nmcli",
    "ubuntu-22.04": "netplan",
    "debian-12": "iproute2",
}


def _osr(distro: str) -> tuple[str, int | None]:
    osr = parse_os_release((DATA / distro / "os-release").read_text())
    return osr.id, osr.major


@pytest.mark.parametrize("distro", sorted(EXPECTED_BACKEND))
def test_backend_per_distribution(distro: str) -> None:
    os_id, major = _osr(distro)
    assert backend_for(os_id, major, networkmanager=False) == EXPECTED_BACKEND[distro]


def test_networkmanager_host_uses_nmcli_unless_distribution_has_its_own() -> None:
    assert backend_for("debian", 12, networkmanager=True) == "nmcli"
    assert backend_for("ubuntu", 22, networkmanager=True) == "netplan"


@pytest.mark.parametrize("distro", sorted(EXPECTED_BACKEND))
def test_bridge_plan_matches_golden(distro: str) -> None:
    backend = EXPECTED_BACKEND[distro]
    plans: dict[str, object] = {}
    for label, state in (("static", UPLINK), ("dhcp", DHCP_UPLINK)):
        if backend == "iproute2":
            plans[label] = [list(step) for step in plan_create(state, "br0")]
        else:
            plans[label] = PERSISTENT_BACKENDS[backend](
                BridgeSpec.from_state("br0", state)
            ).as_dict()
    check_golden_json(DATA / distro / "bridge-plan.json", plans)


def test_spec_from_state_separates_static_and_dhcp() -> None:
    static = BridgeSpec.from_state("br0", UPLINK)
    assert static.addresses == ("10.231.7.10/24", "fd31:231::10/64")
    assert (static.gateway4, static.dhcp) == ("10.231.7.1", False)
    dhcp = BridgeSpec.from_state("br0", DHCP_UPLINK)
    assert (dhcp.addresses, dhcp.dhcp) == ((), True)


def test_create_plan_moves_every_address_then_the_routes() -> None:
    steps = plan_create(UPLINK, "br0")
    assert steps[0] == ("link", "add", "name", "br0", "type", "bridge")
    assert ("link", "set", "dev", "eth0", "master", "br0") in steps
    assert ("address", "del", "10.231.7.10/24", "dev", "eth0") in steps
    assert ("address", "add", "fd31:231::10/64", "dev", "br0", "nodad") in steps
    assert steps[-2:] == [
        ("route", "replace", "default", "via", "10.231.7.1", "dev", "br0"),
        ("route", "replace", "10.231.60.0/24", "via", "10.231.7.254", "dev", "br0", "metric", "5"),
    ]


def test_delete_plan_is_the_move_back_and_ends_with_the_bridge_removal() -> None:
    bridge = LinkState(
        "br0",
        UPLINK.mac,
        True,
        None,
        "bridge",
        "kvmgr-bridge uplink=eth0",
        UPLINK.addresses,
        UPLINK.routes,
    )
    steps = plan_delete(bridge, "eth0")
    assert steps[0] == ("link", "set", "dev", "eth0", "nomaster")
    assert ("address", "add", "10.231.7.10/24", "brd", "10.231.7.255", "dev", "eth0") in steps
    assert steps[-1] == ("link", "del", "dev", "br0")


def test_differences_names_what_is_missing_or_extra() -> None:
    changed = LinkState("eth0", UPLINK.mac, False, "br0", None, None, UPLINK.addresses[:1], ())
    diffs = differences(UPLINK, changed)
    assert any("fd31:231::10/64" in d for d in diffs)
    assert any("routes" in d for d in diffs)
    assert "master is br0, expected None" in diffs
    assert "link is down" in diffs
    assert differences(UPLINK, UPLINK) == []


@pytest.mark.parametrize("bad", ["", "a" * 16, "br 0", "br/0", "-br"])
def test_bad_interface_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        validate_ifname(bad)
