"""API answers name API calls in their hints, never a CLI command to run (issue 16 item 10)."""

from __future__ import annotations

import pytest

from kvmgr.api.hints import for_api
from tests.api.conftest import As

CASES = [
    ("'kvmgr vm list' shows the VMs", "GET /api/v1/vms shows the VMs"),
    ("shut it down first, or use 'kvmgr vm delete web --force'", "DELETE /api/v1/vms/web"),
    ("start it: 'kvmgr vm start web'", "POST /api/v1/vms/web/start"),
    ("see 'kvmgr vol list images'", "GET /api/v1/pools/images/volumes"),
    ("'kvmgr snap revert web s1 --force'", "POST /api/v1/vms/web/snapshots/s1/revert"),
    ("start it with 'kvmgr host daemons start'", "an admin runs 'kvmgr host daemons start' on"),
]


@pytest.mark.parametrize(("cli", "api"), CASES)
def test_cli_commands_become_api_calls(cli: str, api: str) -> None:
    assert api in str(for_api(cli))


def test_no_hint_but_none_or_empty_passes_through() -> None:
    assert for_api(None) is None
    assert for_api("give less memory") == "give less memory"


def test_answers_of_the_api_name_api_calls(as_user: dict[str, As]) -> None:
    answer = as_user["admin"].get("/api/v1/vms/t-api-no-such-vm")
    assert answer.status_code == 404
    hint = answer.json()["hint"]
    assert "GET /api/v1/vms" in hint and "'kvmgr vm" not in hint


def test_create_refuses_what_it_can_before_202(as_user: dict[str, As]) -> None:
    admin = as_user["admin"]
    taken = admin.post("/api/v1/vms", json={"name": "test"})  # the test driver's own VM
    assert taken.status_code == 409
    no_pool = admin.post("/api/v1/vms", json={"name": "t-api-x", "disks": ["size=1G,pool=t-no"]})
    assert no_pool.status_code == 404 and "GET /api/v1/pools" in no_pool.json()["hint"]
    no_net = admin.post("/api/v1/vms", json={"name": "t-api-y", "networks": ["network=t-no"]})
    assert no_net.status_code == 404 and "GET /api/v1/networks" in no_net.json()["hint"]
