"""Success paths the test driver cannot take, through the API against the real daemon
(qemu:///system): DHCP leases, volume resize, ISO import and its in-use refusal, disk
add/resize/remove and NIC add/remove on a VM, vCPU/memory resize.  The VM stays shut off: every
change here is to its definition, which is the success path that needs no boot."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from fastapi.testclient import TestClient

from kvmgr.api.app import create_app
from kvmgr.images.demo_iso import build_demo_iso
from kvmgr.store import users
from kvmgr.store.models import Role
from tests.api.conftest import As, make_settings
from tests.api.test_success_paths import assert_audited

pytestmark = pytest.mark.integration

SYSTEM_URI = "qemu:///system"
DEMO_ISO_CACHE = Path(os.environ.get("KVMGR_TEST_CACHE", "/var/cache/kvmgr-test")) / "demo.iso"
VM = "t-api2-rd-vm"
ISO = "t-api2-rd-demo.iso"
NET = "t-api2-rd-net"
POOL = "t-api2-rd-pool"


def _cleanup() -> None:
    """Remove whatever this module made, whatever state it was left in."""
    conn = libvirt.open(SYSTEM_URI)
    try:
        with contextlib.suppress(libvirt.libvirtError):
            dom = conn.lookupByName(VM)
            if dom.isActive():
                dom.destroy()
            for target in ("vda", "vdb", "vdc"):
                with contextlib.suppress(libvirt.libvirtError):
                    conn.storageVolLookupByPath(
                        f"/var/lib/libvirt/images/{VM}-{target}.qcow2"
                    ).delete(0)
            with contextlib.suppress(libvirt.libvirtError):
                conn.storageVolLookupByPath(f"/var/lib/libvirt/images/{VM}.qcow2").delete(0)
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        with contextlib.suppress(libvirt.libvirtError):
            conn.storagePoolLookupByName("kvmgr-isos").storageVolLookupByName(ISO).delete(0)
        with contextlib.suppress(libvirt.libvirtError):
            net = conn.networkLookupByName(NET)
            if net.isActive():
                net.destroy()
            net.undefine()
        with contextlib.suppress(libvirt.libvirtError):
            pool = conn.storagePoolLookupByName(POOL)
            for vol in pool.listAllVolumes(0):
                vol.delete(0)
            if pool.isActive():
                pool.destroy()
            pool.delete(0)
            pool.undefine()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[As]:
    app = create_app(make_settings(tmp_path_factory.mktemp("real"), uri=SYSTEM_URI))
    with app.state.ctx.store.session() as session:
        users.create_user(session, "admin", "correct horse battery", Role.admin, None)
        token = users.create_token(session, "admin", "tests")
    try:
        with TestClient(app) as client:
            yield As(client, token)
    finally:
        _cleanup()


def wait_task(caller: As, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task: dict[str, Any] = caller.get(f"/api/v1/tasks/{task_id}").json()
        if task["state"] not in ("queued", "running"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def iso(admin: As) -> str:
    DEMO_ISO_CACHE.parent.mkdir(parents=True, exist_ok=True)
    path = build_demo_iso(DEMO_ISO_CACHE).path
    answer = admin.post("/api/v1/isos", json={"path": str(path), "name": ISO})
    assert answer.status_code == 202, answer.text
    task = wait_task(admin, answer.json()["id"])
    assert task["state"] == "done", task
    assert task["result"]["size"] == path.stat().st_size
    return ISO


@pytest.fixture(scope="module")
def vm(admin: As, iso: str) -> str:
    body = {
        "name": VM,
        "iso": iso,
        "memory": "256M",
        "vcpus": 1,
        "graphics": "none",
        "disks": ["64M"],
        "networks": ["default"],
        "start": False,
    }
    task = wait_task(admin, admin.post("/api/v1/vms", json=body).json()["id"])
    assert task["state"] == "done", task
    return VM


def test_iso_import_list_and_delete_refused_while_used(admin: As, iso: str, vm: str) -> None:
    listed = {row["name"]: row for row in admin.get("/api/v1/isos").json()}
    assert listed[iso]["recommended"]["memory"] > 0
    assert_audited(admin, "iso.import", iso)
    refused = admin.delete(f"/api/v1/isos/{iso}")
    assert refused.status_code == 409 and vm in refused.json()["error"]
    assert refused.json()["hint"]
    assert_audited(admin, "iso.delete", iso, "error")
    assert iso in {row["name"] for row in admin.get("/api/v1/isos").json()}


def test_vm_resize_disks_and_nics(admin: As, vm: str) -> None:
    body = {"vcpus": 2, "memory": "200M", "config": True}
    resized = admin.request("PATCH", f"/api/v1/vms/{vm}/resources", json=body)
    assert resized.status_code == 200, resized.text
    assert resized.json()["vcpus_config"] == 2
    assert resized.json()["memory_config"] == 200 * 1024**2
    assert_audited(admin, "vm.resize", vm)

    added = admin.post(f"/api/v1/vms/{vm}/disks", json={"size": "16M"})
    assert added.status_code == 201, added.text
    target = added.json()["target"]
    assert added.json()["owned"] is True
    grown = admin.request("PATCH", f"/api/v1/vms/{vm}/disks/{target}", json={"size": "32M"})
    assert grown.status_code == 200 and grown.json()["capacity"] == 32 * 1024**2
    shrink = admin.request("PATCH", f"/api/v1/vms/{vm}/disks/{target}", json={"size": "8M"})
    assert shrink.status_code == 422 and "shrink" in shrink.json()["hint"]
    removed = admin.delete(f"/api/v1/vms/{vm}/disks/{target}", params={"delete_volume": True})
    assert removed.status_code == 200 and removed.json()["volume_deleted"] is True
    disks = admin.get(f"/api/v1/vms/{vm}").json()["disks"]
    assert target not in {disk["target"] for disk in disks}
    assert_audited(admin, "vm.disk.add", vm)
    assert_audited(admin, "vm.disk.resize", f"{vm}/{target}")
    assert_audited(admin, "vm.disk.resize", f"{vm}/{target}", "error")
    assert_audited(admin, "vm.disk.remove", f"{vm}/{target}")

    nic = admin.post(f"/api/v1/vms/{vm}/nics", json={"network": "default"})
    assert nic.status_code == 201, nic.text
    mac = nic.json()["mac"]
    macs = {row["mac"] for row in admin.get(f"/api/v1/vms/{vm}").json()["nics"]}
    assert mac in macs and len(macs) == 2
    assert admin.delete(f"/api/v1/vms/{vm}/nics/{mac}").status_code == 200
    assert mac not in {row["mac"] for row in admin.get(f"/api/v1/vms/{vm}").json()["nics"]}
    assert_audited(admin, "vm.nic.add", vm)
    assert_audited(admin, "vm.nic.remove", f"{vm}/{mac}")


def test_network_leases_and_reservation_for_a_vm(admin: As, vm: str) -> None:
    created = admin.post("/api/v1/networks", json={"name": NET, "subnet": "10.233.9.0/24"})
    assert created.status_code == 201, created.text
    assert created.json()["bridge"]  # libvirt picked a virbrN
    assert admin.get(f"/api/v1/networks/{NET}/leases").json() == []
    nic = admin.post(f"/api/v1/vms/{vm}/nics", json={"network": NET}).json()
    reserved = admin.post(
        f"/api/v1/networks/{NET}/reservations", json={"ip": "10.233.9.20", "vm": vm}
    )
    assert reserved.status_code == 201 and reserved.json()["mac"] == nic["mac"]
    assert vm in admin.get(f"/api/v1/networks/{NET}").json()["vms"]
    in_use = admin.delete(f"/api/v1/networks/{NET}")
    assert in_use.status_code == 409 and vm in in_use.json()["error"]
    admin.delete(f"/api/v1/vms/{vm}/nics/{nic['mac']}")
    assert admin.delete(f"/api/v1/networks/{NET}").status_code == 200
    assert_audited(admin, "net.create", NET)
    assert_audited(admin, "net.reserve", f"{NET}/10.233.9.20")
    assert_audited(admin, "net.delete", NET)


def test_volume_resize_on_a_real_pool(admin: As, tmp_path: Path) -> None:
    path = tmp_path / "pool"
    assert admin.post("/api/v1/pools", json={"name": POOL, "path": str(path)}).status_code == 201
    made = admin.post(f"/api/v1/pools/{POOL}/volumes", json={"name": "v1", "size": "10M"})
    assert made.status_code == 201 and (path / "v1").exists()
    body = {"size": "20M"}
    grown = admin.request("PATCH", f"/api/v1/pools/{POOL}/volumes/v1", json=body)
    assert grown.status_code == 200 and grown.json()["capacity"] == 20 * 1024**2
    assert admin.get(f"/api/v1/pools/{POOL}/volumes/v1").json()["capacity"] == 20 * 1024**2
    assert_audited(admin, "vol.resize", f"{POOL}/v1")
    assert admin.delete(f"/api/v1/pools/{POOL}/volumes/v1").status_code == 200
    assert not (path / "v1").exists()
    assert admin.delete(f"/api/v1/pools/{POOL}").status_code == 200


def test_vm_delete_removes_its_volumes_then_the_iso_may_go(admin: As, vm: str, iso: str) -> None:
    deleted = admin.delete(f"/api/v1/vms/{vm}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted_volumes"] == [f"/var/lib/libvirt/images/{vm}.qcow2"]
    assert admin.delete(f"/api/v1/isos/{iso}").status_code == 200
    assert iso not in {row["name"] for row in admin.get("/api/v1/isos").json()}
    assert_audited(admin, "vm.delete", vm)
    assert_audited(admin, "iso.delete", iso)
