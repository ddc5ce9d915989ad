"""The API's moves in the lab: POST /api/v1/vms/{name}/migrate (dry run, then a task) and the
admin-only rule."""

from __future__ import annotations

import time
from pathlib import Path

import libvirt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kvmgr.api.app import create_app
from kvmgr.connect import Connection
from kvmgr.control.hosts import HostRegistry, close_connections
from kvmgr.host import lab as labs
from kvmgr.services import storage
from kvmgr.store import users
from kvmgr.store.models import Role
from kvmgr.units import MIB
from tests.api.conftest import PASSWORD, make_settings
from tests.integration.guest import demo_domain
from tests.lab.conftest import purge_prefix
from tests.lab.test_migration import POOL, _shut_off_domain, _volumes

PREFIX = "lab-mv-api"


def _lab_api(lab: labs.Lab, tmp_path: Path, *, hosts: int) -> tuple[FastAPI, dict[str, str]]:
    """An API on lab host 1 with the first ``hosts`` lab hosts registered, and the tokens of
    an admin and an operator."""
    app = create_app(make_settings(tmp_path / "api", uri=lab.tls_uri(lab.host(1))))
    store = app.state.ctx.store
    registry = HostRegistry(store)
    for host in lab.hosts[:hosts]:
        registry.add(f"h{host.index}", lab.tls_uri(host))
    with store.session() as session:
        users.create_user(session, "admin", PASSWORD, Role.admin, None)
        users.create_user(session, "op", PASSWORD, Role.operator, None)
        tokens = {n: users.create_token(session, n, "tests") for n in ("admin", "op")}
    return app, tokens


def test_api_migrates_a_vm_as_a_task_and_only_for_admins(
    lab: labs.Lab, lab_tls: list[Connection], tmp_path: Path
) -> None:
    purge_prefix(lab_tls, PREFIX)
    app, tokens = _lab_api(lab, tmp_path, hosts=3)
    src, dst = lab_tls[0], lab_tls[2]
    name = f"{PREFIX}-vm"
    path = storage.create_volume(src, POOL, f"{name}.img", 4 * MIB, "raw").path
    src.virconn.defineXML(_shut_off_domain(src, name, [path], "default").to_xml())
    url = f"/api/v1/vms/{name}/migrate"
    try:
        with TestClient(app) as client:
            admin = {"Authorization": f"Bearer {tokens['admin']}"}
            refused = client.post(url, json={"to": "h3"},
                                  headers={"Authorization": f"Bearer {tokens['op']}"})  # fmt: skip
            assert refused.status_code == 403
            dry = client.post(url, json={"to": "h3", "dry_run": True}, headers=admin)
            assert dry.status_code == 200, dry.text
            assert dry.json()["preflight"]["mode"] == "offline"
            assert src.virconn.lookupByName(name)  # the dry run moved nothing
            task = client.post(url, json={"to": "h3"}, headers=admin)
            assert task.status_code == 200 or task.status_code == 202, task.text
            task_id = task.json()["id"]
            deadline = time.monotonic() + 120
            while True:
                state = client.get(f"/api/v1/tasks/{task_id}", headers=admin).json()
                if state["state"] not in ("queued", "running"):
                    break
                assert time.monotonic() < deadline, state
                time.sleep(0.3)
            assert state["state"] == "done", state
        assert dst.virconn.lookupByName(name).isPersistent()
        with pytest.raises(libvirt.libvirtError):
            src.virconn.lookupByName(name)
        assert f"{name}.img" not in _volumes(src)
    finally:
        close_connections()
        purge_prefix(lab_tls, PREFIX)


def test_an_api_cancel_aborts_a_running_migration(
    lab: labs.Lab, lab_tls: list[Connection], demo_iso: Path, tmp_path: Path
) -> None:
    """POST /api/v1/tasks/{id}/cancel of a running vm.migrate: the worker aborts the job, the
    task ends cancelled, the VM runs on the source, and the destination keeps nothing."""
    purge_prefix(lab_tls, PREFIX)
    app, tokens = _lab_api(lab, tmp_path, hosts=2)
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    src, dst = lab_tls[0], lab_tls[1]
    name = f"{PREFIX}-cancel"
    ref = storage.create_volume(src, POOL, f"{name}.qcow2", 64 * MIB, "qcow2")
    src.virconn.defineXML(demo_domain(src, name, str(demo_iso), disk_path=ref.path).to_xml())
    dom = src.virconn.lookupByName(name)
    dom.create()
    try:
        with TestClient(app) as client:
            body = {"to": "h2", "bandwidth_mib": 1}  # slow enough to be caught running
            task = client.post(f"/api/v1/vms/{name}/migrate", json=body, headers=admin)
            assert task.status_code in (200, 202), task.text
            task_id = task.json()["id"]
            deadline = time.monotonic() + 120
            while dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
                state = client.get(f"/api/v1/tasks/{task_id}", headers=admin).json()
                assert state["state"] in ("queued", "running"), state
                assert time.monotonic() < deadline, "the migration job never started"
                time.sleep(0.2)
            asked = client.post(f"/api/v1/tasks/{task_id}/cancel", headers=admin)
            assert asked.status_code == 200, asked.text
            assert asked.json()["cancel_requested"]
            state = _wait_task(client, task_id, admin)
            assert state["state"] == "cancelled", state
            assert "aborted" in (state["error"] or ""), state
        assert dom.isActive() and dom.isPersistent()  # still on the source, running
        with pytest.raises(libvirt.libvirtError):
            dst.virconn.lookupByName(name)
        assert f"{name}.qcow2" not in _volumes(dst)
        assert f"{name}.qcow2" in _volumes(src)
    finally:
        close_connections()
        purge_prefix(lab_tls, PREFIX)


def _wait_task(client: TestClient, task_id: str, headers: dict[str, str]) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while True:
        state: dict[str, object] = client.get(f"/api/v1/tasks/{task_id}", headers=headers).json()
        if state["state"] not in ("queued", "running"):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.3)
