"""Success paths of the network, storage, host and VM-resource routes on libvirt's test driver;
each mutating call must leave its ``ok`` audit row.  What the test driver cannot do (DHCP leases,
volume resize, device attach) runs against the real daemon in test_real_daemon.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmgr.host.check_runner import Status
from tests.api.conftest import TEST_URI, As

NET = "t-api2-net"
POOL = "t-api2-pool"


def assert_audited(admin: As, action: str, target: str, result: str = "ok") -> None:
    rows = admin.get("/api/v1/audit", params={"target": target}).json()
    found = {(row["action"], row["result"]) for row in rows}
    assert (action, result) in found, f"no {result} audit row for {action} {target}: {found}"


def _drop(kind: str, name: str) -> None:
    conn = libvirt.open(TEST_URI)
    try:
        with contextlib.suppress(libvirt.libvirtError):
            obj: Any = (
                conn.networkLookupByName(name)
                if kind == "net"
                else conn.storagePoolLookupByName(name)
            )
            if obj.isActive():
                obj.destroy()
            obj.undefine()
    finally:
        conn.close()


@pytest.fixture
def network() -> Iterator[str]:
    try:
        yield NET
    finally:
        _drop("net", NET)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    try:
        yield POOL, tmp_path / "pool"
    finally:
        _drop("pool", POOL)


def test_network_lifecycle_and_reservations(as_user: dict[str, As], network: str) -> None:
    admin = as_user["admin"]
    body = {"name": network, "subnet": "10.233.7.0/24", "autostart": False}
    created = admin.post("/api/v1/networks", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["gateway"] == "10.233.7.1" and created.json()["active"] is True
    assert network in {row["name"] for row in as_user["viewer"].get("/api/v1/networks").json()}

    reservation = {"ip": "10.233.7.50", "mac": "52:54:00:AA:BB:CC", "hostname": "web1"}
    reserved = admin.post(f"/api/v1/networks/{network}/reservations", json=reservation)
    assert reserved.status_code == 201, reserved.text
    assert reserved.json() == {"mac": "52:54:00:aa:bb:cc", "ip": "10.233.7.50", "hostname": "web1"}
    info = as_user["viewer"].get(f"/api/v1/networks/{network}").json()
    assert info["reservations"] == [reserved.json()]
    taken = admin.post(f"/api/v1/networks/{network}/reservations", json=reservation)
    assert taken.status_code in (409, 422) and taken.json()["hint"]

    removed = admin.delete(f"/api/v1/networks/{network}/reservations/10.233.7.50")
    assert removed.status_code == 200 and removed.json()["mac"] == "52:54:00:aa:bb:cc"
    assert as_user["viewer"].get(f"/api/v1/networks/{network}").json()["reservations"] == []

    assert admin.post(f"/api/v1/networks/{network}/stop").json()["active"] is False
    assert admin.post(f"/api/v1/networks/{network}/start").json()["active"] is True
    autostart = admin.request(
        "PUT", f"/api/v1/networks/{network}/autostart", json={"enabled": True}
    )
    assert autostart.json()["autostart"] is True
    assert admin.delete(f"/api/v1/networks/{network}").status_code == 200
    assert as_user["viewer"].get(f"/api/v1/networks/{network}").status_code == 404

    for action in ("net.create", "net.stop", "net.start", "net.autostart", "net.delete"):
        assert_audited(admin, action, network)
    assert_audited(admin, "net.reserve", f"{network}/10.233.7.50")
    assert_audited(admin, "net.reserve", f"{network}/10.233.7.50", "error")
    assert_audited(admin, "net.unreserve", f"{network}/10.233.7.50")


def test_pool_and_volume_lifecycle(as_user: dict[str, As], pool: tuple[str, Path]) -> None:
    admin = as_user["admin"]
    name, path = pool
    created = admin.post("/api/v1/pools", json={"name": name, "path": str(path)})
    assert created.status_code == 201, created.text
    assert created.json()["active"] is True and created.json()["volumes"] == 0
    assert name in {row["name"] for row in as_user["viewer"].get("/api/v1/pools").json()}

    volume = admin.post(f"/api/v1/pools/{name}/volumes", json={"name": "data1", "size": "10M"})
    assert volume.status_code == 201, volume.text
    assert volume.json()["capacity"] == 10 * 1024 * 1024 and volume.json()["format"] == "qcow2"
    listed = as_user["viewer"].get(f"/api/v1/pools/{name}/volumes").json()
    assert [row["name"] for row in listed] == ["data1"]
    info = as_user["viewer"].get(f"/api/v1/pools/{name}/volumes/data1").json()
    assert info["used_by"] == [] and info["path"].endswith("/data1")
    assert admin.post(f"/api/v1/pools/{name}/refresh").json()["volumes"] == 1

    assert admin.delete(f"/api/v1/pools/{name}/volumes/data1").status_code == 200
    assert as_user["viewer"].get(f"/api/v1/pools/{name}/volumes/data1").status_code == 404
    deleted = admin.delete(f"/api/v1/pools/{name}")
    assert deleted.status_code == 200 and deleted.json()["pool"] == name

    for action in ("pool.create", "pool.refresh", "pool.delete"):
        assert_audited(admin, action, name)
    for action in ("vol.create", "vol.delete"):
        assert_audited(admin, action, f"{name}/data1")


def test_host_info_and_check(as_user: dict[str, As]) -> None:
    info = as_user["viewer"].get("/api/v1/host/info").json()
    assert info["uri"] == TEST_URI and info["cpus"] > 0 and info["memory"] > 0
    assert info["domain_type"] == "test"
    check = as_user["viewer"].get("/api/v1/host/check").json()
    assert isinstance(check["can_run_vms"], bool) and check["summary"]
    assert {row["status"] for row in check["results"]} <= {status.value for status in Status}
    assert len(check["results"]) >= 3
    assert all(row["hint"] for row in check["results"] if row["status"] == "FAIL")


def test_vm_resize_of_the_definition(as_user: dict[str, As], test_vm: str) -> None:
    admin = as_user["admin"]
    before = admin.get(f"/api/v1/vms/{test_vm}/resources").json()
    try:
        body = {"memory": "1G", "config": True}
        resized = admin.request("PATCH", f"/api/v1/vms/{test_vm}/resources", json=body)
        assert resized.status_code == 200, resized.text
        assert resized.json()["memory_config"] == 1024**3
        assert admin.get(f"/api/v1/vms/{test_vm}/resources").json()["memory_config"] == 1024**3
        assert_audited(admin, "vm.resize", test_vm)
    finally:
        admin.request(
            "PATCH",
            f"/api/v1/vms/{test_vm}/resources",
            json={"memory": f"{before['memory_config'] // 1024**2}M", "config": True},
        )
