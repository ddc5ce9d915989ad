"""POST /api/v1/vms with ``unattended`` or ``image``: fields accepted, secrets never echoed.

The test driver has no ISO to read nor cloud image library, so these creates fail as tasks;
what is checked is the shape of the request, that failures say why, and that the passwords
given appear in no task, audit entry or answer (the real installs run in
tests/integration/test_installs.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from tests.api.conftest import As
from tests.api.test_vms import wait_task

SECRET = "api-secret-never-echoed"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl api"


def _everything(caller: As, admin: As, app: FastAPI) -> str:
    """Tasks and audit as the API shows them, and every stored task row's parameters."""
    from kvmgr.store.models import Task

    with app.state.ctx.store.session() as session:
        rows = [[task.params, task.result, task.error] for task in session.query(Task).all()]
    shown = [caller.get("/api/v1/tasks").json(), admin.get("/api/v1/audit").json()]
    return json.dumps([shown, rows], default=str)


def test_unattended_fields_and_no_password_echo(
    as_user: dict[str, As], app: FastAPI, tmp_path: Path
) -> None:
    # An ISO that exists (a missing one is a 404 before any task) but is no installer.
    iso = tmp_path / "rocky.iso"
    iso.write_bytes(b"not an ISO 9660 image" * 100)
    body = {
        "name": "t-api-unatt",
        "iso": str(iso),
        "graphics": "none",
        "wait": "installed",
        "unattended": {"user": "alice", "password": SECRET, "root_password": SECRET,
                       "ssh_keys": [KEY], "packages": ["vim"], "profile": "minimal"},
    }  # fmt: skip
    answer = as_user["admin"].post("/api/v1/vms", json=body)
    assert answer.status_code == 202, answer.text
    assert SECRET not in answer.text
    task = wait_task(as_user["admin"], answer.json()["id"])
    assert task["state"] == "failed" and "rocky.iso" in task["error"]
    stored = _stored_params(app, task["id"])
    assert stored["unattended"]["root_password_hash"].startswith("$6$")
    assert SECRET not in _everything(as_user["admin"], as_user["admin"], app)


def test_cloud_image_fields_and_unknown_image(as_user: dict[str, As], app: FastAPI) -> None:
    body = {
        "name": "t-api-cloud",
        "image": "t-api-no-such-image",
        "graphics": "none",
        "cloud_init": {"user": "alice", "password": SECRET, "ssh_keys": [KEY],
                       "network_config": "version: 2\nethernets: {}\n"},
    }  # fmt: skip
    answer = as_user["admin"].post("/api/v1/vms", json=body)
    assert answer.status_code == 202, answer.text
    task = wait_task(as_user["admin"], answer.json()["id"])
    assert task["state"] == "failed" and "not in the library" in task["error"]
    assert SECRET not in _everything(as_user["admin"], as_user["admin"], app)


def test_bad_wait_and_profile_are_422(as_user: dict[str, As]) -> None:
    bad = as_user["admin"].post(
        "/api/v1/vms", json={"name": "t-api-bad", "unattended": {"profile": "server"}}
    )
    assert bad.status_code == 422
    bad = as_user["admin"].post("/api/v1/vms", json={"name": "t-api-bad", "wait": "forever"})
    assert bad.status_code == 422


def _stored_params(app: FastAPI, task_id: str) -> dict[str, Any]:
    from kvmgr.store.models import Task

    with app.state.ctx.store.session() as session:
        row = session.get(Task, task_id)
        assert row is not None and row.params is not None
        return dict(row.params)


def test_wizard_sources_images_and_iso_script_kind(as_user: dict[str, As]) -> None:
    assert as_user["viewer"].get("/api/v1/images").json() == []  # no library on this host yet
    from kvmgr.api.routes.isos import install_script_kind

    assert install_script_kind("rocky9") == "kickstart"
    assert install_script_kind("debian12") == "preseed"
    assert install_script_kind("win10") == "autounattend"  # osinfo-db's windows-unattend
    assert install_script_kind("win11") == "autounattend"
    assert install_script_kind("winxp") is None  # no answer-file template before Vista
    assert install_script_kind("nope") is None


def test_a_product_key_for_a_target_that_is_not_windows_is_refused_and_makes_no_task(
    as_user: dict[str, As], app: FastAPI, tmp_path: Path
) -> None:
    """A key means Windows: for any other target (or one that cannot be told) it is refused
    before any task, saying how to name a Windows OS (Windows keys: test_windows_secrets_api)."""
    iso = tmp_path / "rocky.iso"
    iso.write_bytes(b"not an ISO 9660 image" * 100)
    key = "ABCDE-FGHIJ-KLMNO-PQRST-UVWXY"
    body = {"name": "t-api-win", "iso": str(iso), "unattended": {"product_key": key}}
    answer = as_user["admin"].post("/api/v1/vms", json=body)
    assert answer.status_code == 422, answer.text
    assert "does not install Windows" in answer.json()["error"]
    assert "win10" in answer.json()["hint"]
    assert key not in _everything(as_user["admin"], as_user["admin"], app)
