"""The API's moves in the lab: POST /api/v1/vms/{name}/migrate (dry run, then a task) and the
admin-only rule."""

from __future__ import annotations

import time
from pathlib import Path

import libvirt
import pytest
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
from tests.lab.test_migration import POOL, _shut_off_domain, _volumes
from tests.lab.test_moves import _purge_prefix

PREFIX = "lab-mv-api"


def test_api_migrates_a_vm_as_a_task_and_only_for_admins(
    lab: labs.Lab, lab_tls: list[Connection], tmp_path: Path
) -> None:
    _purge_prefix(lab_tls)
    app = create_app(make_settings(tmp_path / "api", uri=lab.tls_uri(lab.host(1))))
    ctx = app.state.ctx
    registry = HostRegistry(ctx.store)
    for host in lab.hosts[:3]:
        registry.add(f"h{host.index}", lab.tls_uri(host))
    with ctx.store.session() as session:
        users.create_user(session, "admin", PASSWORD, Role.admin, None)
        users.create_user(session, "op", PASSWORD, Role.operator, None)
        tokens = {n: users.create_token(session, n, "tests") for n in ("admin", "op")}
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
        _purge_prefix(lab_tls)
