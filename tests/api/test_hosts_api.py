"""/api/v1/hosts and ?host= on the other routes, on libvirt's test driver: test:///file hosts, one
that never answers, and the server's own test:///default."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from bench.driverfile import write_driver_file

from tests.api.conftest import As


def _dead_uri() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return f"qemu+tcp://127.0.0.1:{port}/system"  # nothing listens there any more


def test_hosts_routes_and_host_parameter(as_user: dict[str, As], tmp_path: Path) -> None:
    admin, viewer, op1 = as_user["admin"], as_user["viewer"], as_user["op1"]
    uri = write_driver_file(tmp_path / "api-h1.xml", 5)
    body = {"name": "api-h1", "uri": uri, "labels": {"rack": "r1"}}
    assert viewer.post("/api/v1/hosts", json=body).status_code == 403
    assert op1.post("/api/v1/hosts", json=body).status_code == 403
    added = admin.post("/api/v1/hosts", json=body)
    assert added.status_code == 201, added.text
    assert added.json()["labels"] == {"rack": "r1"} and added.json()["host_uuid"]
    assert admin.post("/api/v1/hosts", json=body).status_code == 409
    bad = admin.post("/api/v1/hosts", json={"name": "t", "uri": "qemu+tcp://n1/system"})
    assert bad.status_code == 422 and "insecure" in bad.text
    bad_label = admin.post("/api/v1/hosts", json={**body, "name": "x", "labels": {"a b": "c"}})
    assert bad_label.status_code == 422

    # every user reads them; the server's own daemon is one of them
    hosts = {h["name"]: h for h in viewer.get("/api/v1/hosts").json()}
    assert hosts["api-h1"]["state"] == "up" and hosts["api-h1"]["vms_defined"] == 5
    own = [h for h in hosts.values() if h["uri"] == "test:///default"]
    assert len(own) == 1 and own[0]["state"] == "up"
    assert viewer.get("/api/v1/hosts/api-h1").json()["uri"] == uri
    assert viewer.get("/api/v1/hosts/nope").status_code == 404

    # ?host= picks the host of any route
    names = [vm["name"] for vm in viewer.get("/api/v1/vms", params={"host": "api-h1"}).json()]
    assert names == [f"t-bench-0000{i}" for i in range(5)]
    assert "test" in [vm["name"] for vm in viewer.get("/api/v1/vms").json()]
    assert viewer.get("/api/v1/vms", params={"host": "nope"}).status_code == 404
    assert viewer.get("/api/v1/vms", params={"host": "../x"}).status_code == 422
    started = admin.post("/api/v1/vms/t-bench-00001/start", params={"host": "api-h1"})
    assert started.status_code < 300, started.text
    one = viewer.get("/api/v1/vms/t-bench-00001", params={"host": "api-h1"}).json()
    assert one["state"] == "running"
    assert viewer.get("/api/v1/vms/t-bench-00001").status_code == 404  # not on the own host

    # the fleet in one request, a dead host as a row of its own, within the bound
    dead = admin.post(
        "/api/v1/hosts",
        json={"name": "api-dead", "uri": _dead_uri(), "insecure_transport": True},
    )
    assert dead.status_code == 503  # verified before saving: it does not answer
    ctx = admin.client.app.state.ctx  # type: ignore[attr-defined]
    ctx.hosts.add("api-dead", _dead_uri(), insecure_transport=True, verify=False)
    began = time.monotonic()
    fleet = viewer.get("/api/v1/vms", params={"all_hosts": "true"}).json()
    assert time.monotonic() - began < 10
    by_host: dict[str, int] = {}
    for row in fleet:
        by_host[row["host"]] = by_host.get(row["host"], 0) + 1
    assert by_host["api-h1"] == 5
    assert [r["host"] for r in fleet if r["state"] == "unreachable"] == ["api-dead"]
    assert all("may_act" in r for r in fleet if r["state"] != "unreachable")

    # admins change and forget hosts
    assert viewer.request("PATCH", "/api/v1/hosts/api-h1", json={}).status_code == 403
    changed = admin.request(
        "PATCH", "/api/v1/hosts/api-h1", json={"maintenance": True, "labels": {"zone": "b"}}
    ).json()
    assert changed["maintenance"] is True and changed["labels"] == {"zone": "b"}
    assert admin.delete("/api/v1/hosts/api-dead").status_code == 409  # cannot tell: --force
    assert admin.delete("/api/v1/hosts/api-dead", params={"force": "true"}).status_code == 200
    assert admin.delete("/api/v1/hosts/api-h1").json() == {"removed": "api-h1", "vms_forgotten": []}
    assert [h["name"] for h in viewer.get("/api/v1/hosts").json()] == [own[0]["name"]]


def test_a_console_token_opens_its_own_host_only() -> None:
    """VM names repeat across hosts: a token for 'web1' on one host is no token for another's."""
    from kvmgr.api.security import ConsoleTokens
    from kvmgr.store.models import Role
    from kvmgr.store.users import Principal

    tokens = ConsoleTokens(30, "s" * 40)
    ann = Principal(1, "ann", Role.operator, None)
    token = tokens.issue(ann, "web1", "serial", "node1")
    assert tokens.redeem(token, "web1", "serial", "node2") is None
    token = tokens.issue(ann, "web1", "serial", "node1")
    assert tokens.redeem(token, "web1", "serial", "node1") == ann
