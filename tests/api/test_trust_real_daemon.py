"""Issue 11 hole 1 on the real daemon (qemu:///system), through the API: the reproductions of the
issue are refused before libvirt defines anything, and what an operator may use still works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kvmgr.api.app import create_app
from kvmgr.connect import Connection, open_connection
from kvmgr.services import clones
from kvmgr.store import users
from kvmgr.store.models import Role
from tests.api.conftest import PASSWORD, As, make_settings
from tests.api.test_real_daemon import wait_task
from tests.integration.conftest import purge_prefix

pytestmark = pytest.mark.integration

SYSTEM_URI = "qemu:///system"
PREFIX = "t-trust-rd"
USERS = {"admin": (Role.admin, None), "opa": (Role.operator, "team-a"),
         "opb": (Role.operator, "team-b")}  # fmt: skip


@pytest.fixture(scope="module")
def system() -> Iterator[Connection]:
    conn = open_connection(SYSTEM_URI)
    purge_prefix(conn, PREFIX)
    try:
        yield conn
    finally:
        purge_prefix(conn, PREFIX)
        conn.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, system: Connection) -> FastAPI:
    return create_app(make_settings(tmp_path_factory.mktemp("trust-rd"), uri=SYSTEM_URI))


@pytest.fixture(scope="module")
def callers(app: FastAPI) -> Iterator[dict[str, As]]:
    with app.state.ctx.store.session() as session:
        tokens = {}
        for name, (role, group) in USERS.items():
            users.create_user(session, name, PASSWORD, role, group)
            tokens[name] = users.create_token(session, name, "tests")
    with TestClient(app) as client:
        yield {name: As(client, token) for name, token in tokens.items()}


def _create(caller: As, name: str, **fields: Any) -> Any:
    body = {"name": name, "memory": "64M", "vcpus": 1, "graphics": "none", "start": False,
            "networks": ["none"], **fields}  # fmt: skip
    return caller.post("/api/v1/vms", json=body)


def _made(caller: As, name: str, **fields: Any) -> dict[str, Any]:
    answer = _create(caller, name, **fields)
    assert answer.status_code == 202, answer.text
    task = wait_task(caller, answer.json()["id"])
    assert task["state"] == "done", task
    result: dict[str, Any] = task["result"]
    return result


def _defined(system: Connection, name: str) -> bool:
    try:
        system.virconn.lookupByName(name)
    except libvirt.libvirtError:
        return False
    return True


def test_host_files_never_become_disks_or_cdroms(
    callers: dict[str, As], system: Connection, tmp_path: Path
) -> None:
    link = tmp_path / "disk.img"
    link.symlink_to("/etc/shadow")
    name = f"{PREFIX}-shadow"
    attempts = [
        ("opa", {"disks": ["path=/etc/shadow"]}),
        ("opa", {"iso": "/etc/shadow", "disks": ["none"]}),
        ("opa", {"disks": [f"path={link}"]}),
        ("admin", {"disks": [f"path={link}"]}),
        ("admin", {"disks": [f"path={tmp_path}/../../../../../etc/shadow"]}),
        ("admin", {"iso": str(link), "disks": ["none"]}),
    ]
    for caller, fields in attempts:
        answer = _create(callers[caller], name, **fields)
        assert answer.status_code == 403, (caller, fields, answer.text)
        assert not _defined(system, name), (caller, fields)


def test_another_groups_volume_and_a_template_disk_are_refused(
    callers: dict[str, As], system: Connection
) -> None:
    theirs = _made(callers["opb"], f"{PREFIX}-b", disks=["16M"])["volumes"][0]
    mine = f"{PREFIX}-a"
    _made(callers["opa"], mine, disks=["none"])
    refused = callers["opa"].post(f"/api/v1/vms/{mine}/disks", json={"path": theirs})
    assert refused.status_code == 403 and "another user or group" in refused.json()["error"]
    # The same through a new VM of opa's.
    refused = _create(callers["opa"], f"{PREFIX}-a2", disks=[f"path={theirs}"])
    assert refused.status_code == 403 and not _defined(system, f"{PREFIX}-a2")

    template = f"{PREFIX}-tmpl"
    base = _made(callers["admin"], template, disks=["16M"])["volumes"][0]
    clones.mark_template(system, template)
    for caller in ("opa", "admin"):
        refused = callers[caller].post(f"/api/v1/vms/{mine}/disks", json={"path": base})
        assert refused.status_code == 403 and "template" in refused.json()["error"], caller
    assert [d for d in system.virconn.lookupByName(mine).XMLDesc(0).split() if base in d] == []

    # What an operator may use still works: a new disk on their own VM.
    added = callers["opa"].post(f"/api/v1/vms/{mine}/disks", json={"size": "16M"})
    assert added.status_code == 201, added.text


def test_pools_on_system_directories_are_refused(
    callers: dict[str, As], system: Connection, tmp_path: Path
) -> None:
    link = tmp_path / "etc"
    link.symlink_to("/etc")
    for path in ("/etc", str(link), "/", "/var/lib/kvmgr"):
        answer = callers["admin"].post("/api/v1/pools", json={"name": f"{PREFIX}-p", "path": path})
        assert answer.status_code == 422 and "system directory" in answer.json()["error"], path
    assert f"{PREFIX}-p" not in system.virconn.listStoragePools()
