"""Groups of pools and networks changed after creation (PATCH, ``kvmgr net/pool set``), owner
records of what the CLI makes, and the object leases as the API sees them (test driver).

The CLI runs in this process on the app's own database, so its records are the ones the API's
authorisation reads.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from kvmgr.cli.main import app as cli_app
from kvmgr.control import ownership
from kvmgr.control.leases import Leases
from kvmgr.control.objects import net_key, pool_key
from kvmgr.errors import Forbidden
from kvmgr.store.db import Store
from kvmgr.store.models import Role
from kvmgr.store.users import Principal
from tests.api.conftest import TEST_URI, As

FORK = multiprocessing.get_context("fork")
#: A VM of that name exists (the test driver's), so a request that passes every check of its
#: inputs ends in 409 (name in use) and never queues a create.
TAKEN = "test"


@pytest.fixture
def cli(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI on the app's database."""
    monkeypatch.setenv("KVMGR_DB_URL", app.state.ctx.store.url)
    yield


def kvmgr(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, ["-c", TEST_URI, *args])
    return result.exit_code, result.output


def _create(user: As, **body: object) -> int:
    request = {"name": TAKEN, "disks": ["size=1G"], "networks": ["default"], **body}
    return int(user.post("/api/v1/vms", json=request).status_code)


def test_a_networks_group_is_changed_and_cleared_by_admins_only(
    as_user: dict[str, As], app: FastAPI
) -> None:
    assert _create(as_user["op1"]) == 409  # shared: op1 may use it
    for who in ("viewer", "op1"):
        refused = as_user[who].request(
            "PATCH", "/api/v1/networks/default", json={"group": "team-a"}
        )
        assert refused.status_code == 403, refused.text
    changed = as_user["admin"].request(
        "PATCH", "/api/v1/networks/default", json={"group": "team-b"}
    )
    assert changed.status_code == 200, changed.text
    assert as_user["viewer"].get("/api/v1/networks/default").json()["group"] == "team-b"
    assert _create(as_user["op1"]) == 403  # team-a's operator, team-b's network
    assert _create(as_user["op3"]) == 409  # team-b's operator
    cleared = as_user["admin"].request("PATCH", "/api/v1/networks/default", json={"group": None})
    assert cleared.status_code == 200, cleared.text
    assert as_user["admin"].get("/api/v1/networks/default").json()["group"] is None
    assert _create(as_user["op1"]) == 409
    missing = as_user["admin"].request("PATCH", "/api/v1/networks/t-nope", json={"group": None})
    assert missing.status_code == 404
    bad = as_user["admin"].request("PATCH", "/api/v1/networks/default", json={"group": "a b"})
    assert bad.status_code == 422


def test_a_pools_group_is_changed_by_the_cli_and_read_by_the_api(
    as_user: dict[str, As], app: FastAPI, cli: None
) -> None:
    code, output = kvmgr("pool", "set", "default-pool", "--group", "team-b")
    assert code == 0, output
    assert as_user["viewer"].get("/api/v1/pools/default-pool").json()["group"] == "team-b"
    assert _create(as_user["op1"], disks=["pool=default-pool,size=1G"]) == 403
    assert _create(as_user["op3"], disks=["pool=default-pool,size=1G"]) == 409
    code, output = kvmgr("pool", "set", "default-pool", "--no-group")
    assert code == 0, output
    assert _create(as_user["op1"], disks=["pool=default-pool,size=1G"]) == 409
    code, output = kvmgr("pool", "set", "default-pool")
    assert code != 0 and "--group NAME or --no-group" in output
    changed = as_user["admin"].request(
        "PATCH", "/api/v1/pools/default-pool", json={"group": "team-a"}
    )
    assert changed.status_code == 200, changed.text
    code, output = kvmgr("pool", "info", "default-pool", "-o", "json")
    assert '"group": "team-a"' in output, output
    as_user["admin"].request("PATCH", "/api/v1/pools/default-pool", json={"group": None})


def test_cli_made_objects_are_recorded_as_the_admins_like_api_made_ones(
    as_user: dict[str, As], app: FastAPI, cli: None
) -> None:
    store = app.state.ctx.store
    host = app.state.ctx.own_host()
    code, output = kvmgr("vol", "create", "default-pool", "t-objg-cli.img", "--size", "1M")
    assert code == 0, output
    made = as_user["admin"].post(
        "/api/v1/pools/default-pool/volumes", json={"name": "t-objg-api.img", "size": "1M"}
    )
    assert made.status_code == 201, made.text
    try:
        paths = {}
        for name in ("t-objg-cli.img", "t-objg-api.img"):
            info = as_user["admin"].get(f"/api/v1/pools/default-pool/volumes/{name}").json()
            paths[name] = info["path"]
        cli_owner = ownership.owner_of(store, "volume", paths["t-objg-cli.img"], host=host)
        assert cli_owner is not None and cli_owner.owner_id is None
        assert cli_owner.creator.startswith("cli:")
        api_owner = ownership.owner_of(store, "volume", paths["t-objg-api.img"], host=host)
        assert api_owner is not None and api_owner.owner == "admin"
        # Neither is a free volume an operator may take: both are the admins'.
        for path in paths.values():
            answer = as_user["op1"].post(
                "/api/v1/vms", json={"name": TAKEN, "disks": [f"path={path}"], "networks": []}
            )
            assert answer.status_code == 403, answer.text
            assert "another user or group owns it" in answer.json()["error"]
    finally:
        code, output = kvmgr("vol", "delete", "default-pool", "t-objg-cli.img")
        assert code == 0, output
        gone = as_user["admin"].delete("/api/v1/pools/default-pool/volumes/t-objg-api.img")
        assert gone.status_code == 200, gone.text
    for path in paths.values():  # deletes by either face drop the record
        assert ownership.owner_of(store, "volume", path, host=host) is None


def test_network_create_records_the_cli_and_its_group(app: FastAPI, cli: None) -> None:
    store = app.state.ctx.store
    host = app.state.ctx.own_host()
    code, output = kvmgr(
        "net", "create", "t-objg-net", "--subnet", "10.231.9.0/24", "--group", "team-a"
    )
    assert code == 0, output
    try:
        owner = ownership.owner_of(store, "network", "t-objg-net", host=host)
        assert owner is not None and owner.owner_id is None and owner.group == "team-a"
        op3 = Principal(999, "op3", Role.operator, "team-b")
        with pytest.raises(Forbidden, match="serves group 'team-a'"):
            app.state.ctx.authz(app.state.ctx.conn(), op3).network("t-objg-net")
    finally:
        code, output = kvmgr("net", "delete", "t-objg-net")
        assert code == 0, output
    assert ownership.owner_of(store, "network", "t-objg-net", host=host) is None


def _hold(url: str, keys: list[str], ready: object) -> None:
    store = Store(url)
    leases = Leases(store, ttl=600)
    for key in keys:
        leases.take(key, "pool create", actor="cli:other")
    ready.set()  # type: ignore[attr-defined]
    time.sleep(600)


def test_the_api_is_refused_while_another_process_works_on_the_object(
    as_user: dict[str, As], app: FastAPI
) -> None:
    host = app.state.ctx.own_host()
    keys = [net_key(host, "default").key, pool_key(host, "default-pool").key]
    ready = FORK.Event()
    holder = FORK.Process(target=_hold, args=(app.state.ctx.store.url, keys, ready))
    holder.start()
    try:
        assert ready.wait(30)
        admin = as_user["admin"]
        for method, url, body in (
            ("POST", "/api/v1/networks/default/stop", None),
            ("PATCH", "/api/v1/networks/default", {"group": None}),
            ("POST", "/api/v1/pools/default-pool/refresh", None),
            ("PATCH", "/api/v1/pools/default-pool", {"group": None}),
        ):
            answer = admin.request(method, url, json=body)
            assert answer.status_code == 409, (url, answer.text)
            assert "busy: pool create by cli:other" in answer.json()["error"], answer.text
        assert (
            admin.get("/api/v1/networks/default")
            .json()["busy"]
            .startswith("pool create by cli:other since")
        )
    finally:
        holder.kill()
        holder.join(10)
    assert as_user["admin"].get("/api/v1/pools/default-pool").json()["busy"] is None


def test_a_cli_made_vm_and_its_disk_are_the_admins_and_deleting_it_drops_them(
    as_user: dict[str, As], app: FastAPI, cli: None
) -> None:
    store = app.state.ctx.store
    host = app.state.ctx.own_host()
    small = ("--memory", "64M", "--vcpus", "1", "--network", "none", "--graphics", "none")
    code, output = kvmgr("vm", "create", "t-objg-vm", "--disk", "16M", "--no-start", *small)
    assert code == 0, output
    try:
        uuid = as_user["admin"].get("/api/v1/vms/t-objg-vm").json()["uuid"]
        owner = ownership.owner_of(store, "vm", uuid, host=host)
        assert owner is not None and owner.owner_id is None and owner.creator.startswith("cli:")
        disks = ownership.owners_of_kind(store, "volume", host=host)
        made = [path for path in disks if "t-objg-vm" in path]
        assert made, disks
        refused = as_user["op1"].post("/api/v1/vms/t-objg-vm/start")
        assert refused.status_code == 403, refused.text
    finally:
        code, output = kvmgr("vm", "delete", "t-objg-vm")
        assert code == 0, output
    assert ownership.owner_of(store, "vm", uuid, host=host) is None
    for path in made:
        assert ownership.owner_of(store, "volume", path, host=host) is None
