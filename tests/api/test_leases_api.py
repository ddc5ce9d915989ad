"""The API takes the same database leases as the CLI: while another process holds a VM, power
actions, live changes and snapshot tasks are refused with 409 naming the holder, and the VM's
info says who is busy with it."""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kvmgr.api.app import create_app
from kvmgr.control.leases import Leases
from kvmgr.control.models import Operation, OperationRecord
from kvmgr.control.plane import vm_key
from kvmgr.services.steps import recovery_action
from kvmgr.store.db import Store
from tests.api.conftest import As, make_settings

FORK = multiprocessing.get_context("fork")
HOLDER = "snapshot create nightly by cli:other since"


def _hold(url: str, key: str, ready: Any, release: Any) -> None:
    store = Store(url)
    with Leases(store).hold(key, "snapshot create nightly", actor="cli:other"):
        ready.set()
        release.wait(60)


@pytest.fixture
def held(app: FastAPI, test_vm: str) -> Iterator[str]:
    ctx = app.state.ctx
    uuid = ctx.conn().virconn.lookupByName(test_vm).UUIDString()
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(
        target=_hold, args=(ctx.store.url, vm_key(ctx.host_name(), uuid).key, ready, release)
    )
    holder.start()
    assert ready.wait(30)
    yield test_vm
    release.set()
    holder.join(30)


def test_a_vm_held_elsewhere_is_busy_for_the_api(as_user: dict[str, As], held: str) -> None:
    admin = as_user["admin"]
    before = admin.get(f"/api/v1/vms/{held}").json()["state"]
    for method, url, body in [
        ("POST", f"/api/v1/vms/{held}/pause", None),
        ("POST", f"/api/v1/vms/{held}/off", None),
        ("PUT", f"/api/v1/vms/{held}/autostart", {"enabled": False}),
        ("PATCH", f"/api/v1/vms/{held}/resources", {"vcpus": 1}),
        ("POST", f"/api/v1/vms/{held}/snapshots", {"name": "t-core-s"}),
        ("DELETE", f"/api/v1/vms/{held}?force=true", None),
    ]:
        answer = admin.request(method, url, json=body)
        assert answer.status_code == 409, (method, url, answer.text)
        assert f"VM {held} is busy: {HOLDER}" in answer.text, answer.text
    info = admin.get(f"/api/v1/vms/{held}").json()
    assert info["busy"].startswith(HOLDER)
    assert info["state"] == before  # nothing was done


def test_actions_take_and_release_the_lease(as_user: dict[str, As], test_vm: str) -> None:
    admin = as_user["admin"]
    assert admin.post(f"/api/v1/vms/{test_vm}/pause").json()["state"] == "paused"
    assert admin.get(f"/api/v1/vms/{test_vm}").json()["busy"] is None
    assert admin.post(f"/api/v1/vms/{test_vm}/resume").json()["state"] == "running"


DOMAIN = """<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>
<vcpu>1</vcpu><os><type>hvm</type></os></domain>"""


def test_a_delete_is_a_journaled_operation_of_its_user(
    app: FastAPI, as_user: dict[str, As]
) -> None:
    ctx = app.state.ctx
    ctx.conn().virconn.defineXML(DOMAIN.format(name="t-core-gone"))
    answer = as_user["admin"].delete("/api/v1/vms/t-core-gone")
    assert answer.status_code == 200, answer.text
    [op] = [o for o in ctx.plane.operations(include_done=True) if o.target == "t-core-gone"]
    assert (op.kind, op.state, op.actor, op.host) == ("delete", "done", "admin", ctx.host_name())
    assert ctx.busy("test") is None


NOTES: list[str] = []


@recovery_action("test.core.api.note")
def _note(_conn: object, args: dict[str, Any]) -> None:
    NOTES.append(str(args["what"]))


def test_serve_recovers_on_start(tmp_path: Path) -> None:
    """What a killed server (or CLI) left is undone when the next server starts."""
    settings = make_settings(tmp_path)
    store = Store(settings.database_url)
    child = subprocess.Popen(["true"])
    child.wait()  # its pid now names a dead process of this machine
    with store.session() as session:
        session.add(
            Operation(
                id="op-serve",
                kind="create",
                target="t-core-half",
                host="local",
                actor="admin",
                holder=f"{socket.gethostname()}:{child.pid}:1",
                keys=[],
                state="running",
            )
        )
        session.flush()
        session.add(
            OperationRecord(
                operation_id="op-serve",
                seq=1,
                phase="undo",
                action="test.core.api.note",
                args={"what": "delete t-core-half.qcow2"},
            )
        )
    store.dispose()
    with TestClient(create_app(settings)) as client:
        ops = client.app.state.ctx.plane.operations()  # type: ignore[attr-defined]
    assert NOTES == ["delete t-core-half.qcow2"]
    assert [(op.id, op.state) for op in ops] == [("op-serve", "undone")]
