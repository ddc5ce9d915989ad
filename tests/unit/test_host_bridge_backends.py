"""Persistent bridge backends without touching a link: detection, golden plans, nmcli undo.

The ifcfg and netplan plans are built from copies of realistic configuration files (a CentOS 7
installer's ifcfg file with a route file, an Ubuntu cloud-init netplan file) and compared with
golden files.  Regenerate the goldens with scripts/regen-golden and review the diff.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmgr.errors import HostError, InvalidInput
from kvmgr.host.bridge import BridgeSpec
from kvmgr.host.bridge_backends import Settle, apply_plan, plan_for
from kvmgr.host.bridge_ip import Address, Ip, LinkState, Route
from kvmgr.host.bridge_plans import (
    NetworkFacts,
    Runner,
    choose_backend,
    gather_facts,
    plan_ifcfg_files,
    plan_netplan_files,
    plan_nmcli_connections,
    split_terse,
)
from tests.golden import check_golden_json

DATA = Path(__file__).parent.parent / "data" / "bridge-backends"
BRIDGE = "t-host2-br0"

UPLINK = LinkState(
    name="up0",
    mac="52:54:00:32:00:02",
    up=True,
    master=None,
    kind=None,
    alias=None,
    addresses=(Address("inet", "10.232.1.2/24", "10.232.1.255"),),
    routes=(Route("inet", "default", "10.232.1.1"),),
)
SPEC = BridgeSpec.from_state(BRIDGE, UPLINK)


def _golden(name: str, data: object) -> None:
    check_golden_json(DATA / "golden" / f"{name}.json", data)


def _root(tmp_path: Path, fixture: str) -> Path:
    root = tmp_path / "root"
    shutil.copytree(DATA / fixture, root)
    return root


# ----------------------------------------------------------------------------------- detection
@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (NetworkFacts("up0"), "iproute2"),
        (NetworkFacts("up0", ifcfg=True), "ifcfg"),
        # CentOS 7 with NetworkManager managing the device: nmcli (it writes the ifcfg files)
        (NetworkFacts("up0", True, "connected", "System up0", ifcfg=True), "nmcli"),
        # NetworkManager running but leaving the uplink alone: the network service owns it
        (NetworkFacts("up0", True, "unmanaged", None, ifcfg=True), "ifcfg"),
        (NetworkFacts("up0", True, None, None), "iproute2"),
        (NetworkFacts("up0", False, "connected", "x"), "iproute2"),
        # Ubuntu desktop: netplan renders NetworkManager's configuration, so netplan wins
        (NetworkFacts("up0", True, "connected", "netplan-up0", netplan_files=("/e/a",)), "netplan"),
    ],
)
def test_backend_is_a_function_of_the_facts(facts: NetworkFacts, expected: str) -> None:
    assert choose_backend(facts) == expected


def test_terse_nmcli_fields_unescape_colons_and_backslashes() -> None:
    assert split_terse(r"eth0:connected:Wired\: office\\1") == [
        "eth0",
        "connected",
        r"Wired: office\1",
    ]
    assert split_terse("lo:unmanaged:") == ["lo", "unmanaged", ""]


def test_facts_come_from_the_files_under_root(tmp_path: Path) -> None:
    """nmcli is not installed here, so NetworkManager counts as not running (as it is)."""
    ifcfg = gather_facts("up0", root=_root(tmp_path / "a", "ifcfg"), runner=Runner())
    assert (ifcfg.ifcfg, ifcfg.netplan_files, ifcfg.nm_running) == (True, (), False)
    netplan = gather_facts("up0", root=_root(tmp_path / "b", "netplan"), runner=Runner())
    assert netplan.netplan_files == ("/etc/netplan/50-cloud-init.yaml",)
    assert gather_facts("peer9", root=tmp_path / "b" / "root", runner=Runner()).netplan_files == (
        "/etc/netplan/60-other.yaml",
    )
    assert choose_backend(gather_facts("up0", root=tmp_path, runner=Runner())) == "iproute2"


def test_unknown_backend_and_broken_netplan_yaml_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown bridge backend"):
        plan_for("systemd", UPLINK, BRIDGE, root=tmp_path, runner=Runner())
    (tmp_path / "etc" / "netplan").mkdir(parents=True)
    (tmp_path / "etc" / "netplan" / "01.yaml").write_text("network: [unclosed\n")
    with pytest.raises(HostError, match="not valid YAML"):
        plan_for("auto", UPLINK, BRIDGE, root=tmp_path, runner=Runner())


# ----------------------------------------------------------------------------------- plans
def test_ifcfg_plan_moves_addressing_lines_and_keeps_the_rest(tmp_path: Path) -> None:
    plan = plan_ifcfg_files(SPEC, _root(tmp_path, "ifcfg"), nm=False)
    _golden("ifcfg", plan.as_dict())
    port = plan.files["/etc/sysconfig/network-scripts/ifcfg-up0"] or ""
    assert "UUID=5fb06bd0" in port and "# Generated" in port and "IPADDR" not in port
    assert port.endswith("BOOTPROTO=none\nBRIDGE=t-host2-br0\n")
    bridge = plan.files[f"/etc/sysconfig/network-scripts/ifcfg-{BRIDGE}"] or ""
    assert 'DOMAIN="lab.example"\n' in bridge and "GATEWAY=10.232.1.1\n" in bridge
    assert plan.files["/etc/sysconfig/network-scripts/route-up0"] is None
    assert plan.files[f"/etc/sysconfig/network-scripts/route-{BRIDGE}"] == (
        f"10.232.50.0/24 via 10.232.1.1 dev {BRIDGE}\n"
    )
    with_nm = plan_ifcfg_files(SPEC, tmp_path / "root", nm=True)
    assert with_nm.commands[0] == ("nmcli", "connection", "reload")


def test_netplan_plan_takes_addressing_out_of_the_uplink_entry(tmp_path: Path) -> None:
    plan = plan_netplan_files(SPEC, _root(tmp_path, "netplan"))
    _golden("netplan", plan.as_dict())
    assert "/etc/netplan/60-other.yaml" not in plan.files  # does not define the uplink
    import yaml

    rewritten = yaml.safe_load(plan.files["/etc/netplan/50-cloud-init.yaml"] or "")
    assert rewritten["network"]["ethernets"]["up0"] == {"match": {"name": "up0"}, "mtu": 1500}
    ours = yaml.safe_load(plan.files[f"/etc/netplan/90-kvmgr-{BRIDGE}.yaml"] or "")
    bridge = ours["network"]["bridges"][BRIDGE]
    assert bridge["interfaces"] == ["up0"] and bridge["addresses"] == ["10.232.1.2/24"]
    assert bridge["nameservers"]["search"] == ["lab.example"]


def test_without_a_config_file_plans_fall_back_to_the_running_addresses(tmp_path: Path) -> None:
    netplan = plan_netplan_files(SPEC, tmp_path)
    assert list(netplan.files) == [f"/etc/netplan/90-kvmgr-{BRIDGE}.yaml"]
    assert "10.232.1.2/24" in (netplan.files[f"/etc/netplan/90-kvmgr-{BRIDGE}.yaml"] or "")
    ifcfg = plan_ifcfg_files(SPEC, tmp_path, nm=False)
    assert "IPADDR=10.232.1.2\n" in (
        ifcfg.files[f"/etc/sysconfig/network-scripts/ifcfg-{BRIDGE}"] or ""
    )


NM_SETTINGS = {
    "ipv4.method": "manual",
    "ipv4.addresses": "10.232.1.2/24",
    "ipv4.gateway": "10.232.1.1",
    "ipv4.dns": "10.232.1.1",
    "ipv6.method": "auto",
    "connection.autoconnect": "yes",
}


def test_nmcli_plan_copies_the_old_connection_settings() -> None:
    plan = plan_nmcli_connections(SPEC, "Wired connection 1", NM_SETTINGS)
    _golden("nmcli", plan.as_dict())
    add_bridge = plan.commands[0]
    assert add_bridge[add_bridge.index("ipv4.dns") + 1] == "10.232.1.1"
    assert plan.undo == (("nmcli", "connection", "up", "Wired connection 1"),)


class ScriptedNmcli(Runner):
    """Stands in for nmcli where a step must fail on cue: it records every argv and fails the
    one named."""

    def __init__(self, fail: tuple[str, ...]) -> None:
        super().__init__()
        self.fail = fail
        self.calls: list[tuple[str, ...]] = []

    def __call__(
        self, argv: tuple[str, ...], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        if argv == self.fail:
            raise HostError(f"'{' '.join(argv)}' failed (exit 4): Connection activation failed")
        return subprocess.CompletedProcess(list(argv), 0, "", "")


@pytest.mark.parametrize("failing_step", [1, 2, 3, 4])
def test_nmcli_rollback_deletes_what_it_added_and_reactivates_the_old_connection(
    tmp_path: Path, failing_step: int
) -> None:
    """Which undo commands the executor issues when step N fails, in order (the real
    NetworkManager, tests/integration/test_bridge_nm_real.py, proves they put its profiles back;
    a real activation failure at each step cannot be provoked there).  The link checks are real
    reads of this host's loopback interface, which nothing here changes."""
    lo = Ip().read("lo")
    plan = plan_nmcli_connections(BridgeSpec.from_state(BRIDGE, lo), "Wired 1", NM_SETTINGS)
    runner = ScriptedNmcli(fail=plan.commands[failing_step])
    with pytest.raises(HostError, match="restored as they were") as err:
        apply_plan(plan, lo, root=tmp_path, runner=runner, ip=Ip(), settle=Settle(0.5, 0.1))
    assert "Connection activation failed" in err.value.message
    ran, undone = runner.calls[: failing_step + 1], runner.calls[failing_step + 1 :]
    assert ran == list(plan.commands[: failing_step + 1])
    delete_port = ("nmcli", "connection", "delete", f"{BRIDGE}-port-lo")
    delete_bridge = ("nmcli", "connection", "delete", BRIDGE)
    auto_back = ("nmcli", "connection", "modify", "Wired 1", "connection.autoconnect", "yes")
    expected_undo = {  # steps: add bridge, add port, old autoconnect off, up bridge, up port
        1: [delete_bridge],
        2: [delete_port, delete_bridge],
        3: [auto_back, delete_port, delete_bridge],
        4: [auto_back, delete_port, delete_bridge],
    }
    assert undone == [*expected_undo[failing_step], ("nmcli", "connection", "up", "Wired 1")]
    assert not (tmp_path / "var").exists() or not any((tmp_path / "var").rglob("manifest.json"))


def test_nmcli_plan_keeps_the_uplinks_route_metrics() -> None:
    """NetworkManager would give the bridge its own default metric (425 in 1.42, not the 100 the
    ethernet uplink had): the bridge profile carries the uplink's metric per family."""
    routes = (
        Route("inet", "10.9.0.0/16", "10.232.1.9", metric=50),
        Route("inet", "default", "10.232.1.1", metric=100, protocol="static"),
        Route("inet6", "default", "fd31:231::1", metric=1024),
    )
    add_bridge = plan_nmcli_connections(SPEC, "Wired connection 1", NM_SETTINGS, routes).commands[0]
    assert add_bridge[add_bridge.index("ipv4.route-metric") + 1] == "100"
    assert add_bridge[add_bridge.index("ipv6.route-metric") + 1] == "1024"
    assert "ipv4.route-metric" not in plan_nmcli_connections(SPEC, None, {}).commands[0]
