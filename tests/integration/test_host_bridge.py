"""Bridges for real, inside network namespaces this test creates (never the host's own).

Each test gets a namespace ``kvmgr-t-host-…`` whose uplink is one end of a veth pair; the other
end lives in a second namespace playing the gateway (10.231.1.1), so pings really cross the
bridge.  Deleting the namespaces at the end removes every link the test made.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from kvmgr.cli.main import app
from kvmgr.errors import HostError, InvalidState
from kvmgr.host.bridge import create_bridge, delete_bridge, list_bridges
from kvmgr.host.bridge_ip import Ip, LinkState

pytestmark = pytest.mark.integration

GATEWAY = "10.231.1.1"
HOST_ADDR = "10.231.1.2/24"
NOBODY = "10.231.1.99"  # in the subnet, but no namespace owns it: pings to it go unanswered


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=15, capture_output=True)


@dataclass
class Lab:
    netns: str
    gateway_ns: str
    uplink: str = "up0"

    @property
    def ip(self) -> Ip:
        return Ip(self.netns)

    def state(self) -> LinkState:
        return self.ip.read(self.uplink)


@pytest.fixture
def lab() -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:6]
    lab = Lab(f"kvmgr-t-host-{tag}", f"kvmgr-t-host-{tag}-gw")
    try:
        _ip("netns", "add", lab.netns)
        _ip("netns", "add", lab.gateway_ns)
        _ip(
            "-n",
            lab.netns,
            "link",
            "add",
            lab.uplink,
            "type",
            "veth",
            "peer",
            "name",
            "gw0",
            "netns",
            lab.gateway_ns,
        )
        _ip("-n", lab.netns, "link", "set", "lo", "up")
        _ip("-n", lab.netns, "link", "set", lab.uplink, "up")
        _ip("-n", lab.gateway_ns, "link", "set", "gw0", "up")
        _ip("-n", lab.gateway_ns, "address", "add", f"{GATEWAY}/24", "dev", "gw0")
        _ip("-n", lab.netns, "address", "add", HOST_ADDR, "dev", lab.uplink)
        _ip("-n", lab.netns, "address", "add", "fd31:231::2/64", "dev", lab.uplink, "nodad")
        _ip("-n", lab.netns, "route", "add", "default", "via", GATEWAY)
        _ip("-n", lab.netns, "route", "add", "10.231.50.0/24", "via", GATEWAY, "metric", "5")
        yield lab
    finally:
        for name in (lab.netns, lab.gateway_ns):
            subprocess.run(
                ["ip", "netns", "del", name], check=False, timeout=15, capture_output=True
            )


def test_dry_run_changes_nothing(lab: Lab) -> None:
    before = lab.state()
    result = create_bridge("br0", lab.uplink, netns=lab.netns, dry_run=True)
    assert result.dry_run
    assert result.commands[0] == f"ip -n {lab.netns} link add name br0 type bridge"
    assert any("route replace default via 10.231.1.1 dev br0" in c for c in result.commands)
    assert lab.state() == before
    assert not lab.ip.link_exists("br0")


def test_default_route_uplink_is_refused_without_yes(lab: Lab) -> None:
    before = lab.state()
    with pytest.raises(InvalidState) as err:
        create_bridge("br0", lab.uplink, netns=lab.netns)
    assert "--yes" in (err.value.hint or "")
    assert lab.state() == before
    assert not lab.ip.link_exists("br0")


def test_create_moves_addresses_and_routes_then_delete_restores_exactly(lab: Lab) -> None:
    before = lab.state()

    create_bridge("br0", lab.uplink, netns=lab.netns, yes=True, ping=GATEWAY)

    bridge = lab.ip.read("br0")
    uplink = lab.state()
    assert {a.cidr for a in bridge.addresses} == {a.cidr for a in before.addresses}
    assert set(bridge.routes) == set(before.routes)
    assert bridge.mac == before.mac
    assert uplink.master == "br0"
    assert uplink.addresses == () and uplink.routes == ()
    rows = list_bridges(netns=lab.netns)
    assert rows == [
        {
            "name": "br0",
            "state": "up",
            "mac": before.mac,
            "ports": [lab.uplink],
            "addresses": ["10.231.1.2/24", "fd31:231::2/64"],
            "kvmgr": True,
        }
    ]

    delete_bridge("br0", netns=lab.netns, yes=True)

    assert not lab.ip.link_exists("br0")
    assert lab.state() == before


def test_failed_check_rolls_back_to_the_exact_previous_state(lab: Lab) -> None:
    before = lab.state()
    with pytest.raises(HostError) as err:
        create_bridge("br0", lab.uplink, netns=lab.netns, yes=True, ping=NOBODY, ping_timeout=1)
    assert "restored" in err.value.message and NOBODY in err.value.message
    assert not lab.ip.link_exists("br0")
    assert lab.state() == before


def test_delete_refuses_a_bridge_kvmgr_did_not_create(lab: Lab) -> None:
    _ip("-n", lab.netns, "link", "add", "foreign0", "type", "bridge")
    with pytest.raises(InvalidState, match="not created by kvmgr"):
        delete_bridge("foreign0", netns=lab.netns, yes=True)
    assert lab.ip.link_exists("foreign0")


def test_cli_create_list_delete(lab: Lab) -> None:
    runner = CliRunner()
    before = lab.state()
    created = runner.invoke(
        app,
        [
            "host",
            "bridge",
            "create",
            "br1",
            "--uplink",
            lab.uplink,
            "--netns",
            lab.netns,
            "--yes",
            "-o",
            "json",
        ],
    )
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["moved"]["addresses"][0] == HOST_ADDR
    listed = runner.invoke(app, ["host", "bridge", "list", "--netns", lab.netns, "-o", "json"])
    assert [row["name"] for row in json.loads(listed.output)] == ["br1"]
    refused = runner.invoke(app, ["host", "bridge", "delete", "br1", "--netns", lab.netns])
    assert refused.exit_code == 1 and "--yes" in refused.output
    deleted = runner.invoke(app, ["host", "bridge", "delete", "br1", "--netns", lab.netns, "--yes"])
    assert deleted.exit_code == 0, deleted.output
    assert lab.state() == before
