"""Login with a session cookie (CSRF-protected), API tokens, logout, and the login rate limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kvmgr.api.app import create_app
from kvmgr.store import users
from kvmgr.store.models import Role
from tests.api.conftest import PASSWORD, As, make_settings


def login(client: TestClient, name: str, password: str = PASSWORD) -> str:
    response = client.post("/api/v1/auth/login", json={"name": name, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


def test_cookie_login_needs_the_csrf_token_for_changes(app: FastAPI, test_vm: str) -> None:
    with TestClient(app) as browser:
        csrf = login(browser, "admin")
        cookie = browser.cookies.get("kvmgr_session")
        assert cookie and csrf not in cookie
        assert browser.get("/api/v1/auth/me").json()["name"] == "admin"
        refused = browser.post(f"/api/v1/vms/{test_vm}/pause")
        assert refused.status_code == 403
        assert "CSRF" in refused.json()["error"]
        wrong = browser.post(f"/api/v1/vms/{test_vm}/pause", headers={"X-CSRF-Token": "x" * 43})
        assert wrong.status_code == 403
        done = browser.post(f"/api/v1/vms/{test_vm}/pause", headers={"X-CSRF-Token": csrf})
        assert done.status_code == 200 and done.json()["state"] == "paused"


def test_session_cookie_is_httponly_and_samesite_strict(client: TestClient) -> None:
    response = client.post("/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD})
    header = response.headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=strict" in header


def test_logout_ends_the_session(app: FastAPI) -> None:
    with TestClient(app) as browser:
        csrf = login(browser, "viewer")
        cookie = browser.cookies.get("kvmgr_session")
        assert (
            browser.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
        )
        browser.cookies.set("kvmgr_session", str(cookie))
        assert browser.get("/api/v1/auth/me").status_code == 401


def test_wrong_password_is_refused_and_audited(client: TestClient, as_user: dict[str, As]) -> None:
    response = client.post("/api/v1/auth/login", json={"name": "op3", "password": "nope-nope"})
    assert response.status_code == 401
    audit = as_user["admin"].get("/api/v1/audit", params={"user": "op3"}).json()
    assert audit[0]["action"] == "auth.login" and audit[0]["result"] == "denied"


def test_api_token_lifecycle(as_user: dict[str, As], client: TestClient) -> None:
    created = as_user["viewer"].post("/api/v1/auth/tokens", json={"name": "script"})
    assert created.status_code == 201
    token = created.json()["token"]
    script = As(client, token)
    assert script.get("/api/v1/auth/me").json()["name"] == "viewer"
    listed = as_user["viewer"].get("/api/v1/auth/tokens").json()
    mine = [row for row in listed if row["name"] == "script"]
    assert mine and "token" not in mine[0] and mine[0]["last_used"] is not None
    assert as_user["viewer"].delete(f"/api/v1/auth/tokens/{mine[0]['id']}").status_code == 200
    assert script.get("/api/v1/auth/me").status_code == 401


def test_a_forged_token_is_refused(client: TestClient) -> None:
    assert As(client, "kvm_" + "A" * 43).get("/api/v1/vms").status_code == 401


def test_login_is_rate_limited(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, login_attempts=3, login_window=60))
    with app.state.ctx.store.session() as session:
        users.create_user(session, "alice", PASSWORD, Role.viewer)
    with TestClient(app) as browser:
        for _ in range(3):
            bad = {"name": "alice", "password": "wrong-password"}
            assert browser.post("/api/v1/auth/login", json=bad).status_code == 401
        limited = browser.post("/api/v1/auth/login", json={"name": "alice", "password": PASSWORD})
        assert limited.status_code == 429
        assert "try again" in limited.json()["hint"]


def test_passwords_are_stored_as_argon2_hashes(app: FastAPI) -> None:
    with app.state.ctx.store.session() as session:
        user = users.get_user(session, "admin")
        assert user.password_hash.startswith("$argon2id$")
        assert PASSWORD not in user.password_hash


def test_short_passwords_and_bad_names_are_refused(app: FastAPI) -> None:
    from kvmgr.errors import InvalidInput

    with app.state.ctx.store.session() as session:
        with pytest.raises(InvalidInput, match="at least 8"):
            users.create_user(session, "shorty", "short", Role.viewer)
        with pytest.raises(InvalidInput):
            users.create_user(session, "<script>", PASSWORD, Role.viewer)


def test_the_session_cookie_is_secure_behind_a_tls_proxy(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, listen="0.0.0.0:8443", insecure=True))
    with app.state.ctx.store.session() as session:
        users.create_user(session, "alice", PASSWORD, Role.viewer)
    with TestClient(app) as browser:
        answer = browser.post("/api/v1/auth/login", json={"name": "alice", "password": PASSWORD})
        cookie = answer.headers["set-cookie"].lower()
    assert answer.status_code == 200
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    loopback = make_settings(tmp_path, listen="127.0.0.1:8080")
    assert not loopback.cookie_secure  # plain http on loopback must still log in
