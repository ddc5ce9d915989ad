"""QA of authentication: the login limit per address, session rotation at login."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from kvmgr.api.app import create_app
from kvmgr.store import users
from kvmgr.store.models import Role
from tests.api.conftest import PASSWORD, make_settings


def test_spraying_many_user_names_from_one_address_is_limited(tmp_path: Path) -> None:
    # Per user+address alone, an attacker trying one password against many names is never slowed.
    app = create_app(
        make_settings(tmp_path, login_attempts=3, login_address_attempts=5, login_window=60)
    )
    with app.state.ctx.store.session() as session:
        users.create_user(session, "alice", PASSWORD, Role.viewer)
    with TestClient(app) as attacker:
        for index in range(5):
            guess = {"name": f"user{index}", "password": "Winter2026!"}
            assert attacker.post("/api/v1/auth/login", json=guess).status_code == 401
        limited = attacker.post("/api/v1/auth/login", json={"name": "alice", "password": PASSWORD})
        assert limited.status_code == 429
        assert "from this address" in limited.json()["error"]
        assert "try again" in limited.json()["hint"]


def test_a_successful_login_does_not_reset_the_address_limit(tmp_path: Path) -> None:
    # Otherwise an attacker with one valid account could clear the counter between sprays.
    app = create_app(
        make_settings(tmp_path, login_attempts=3, login_address_attempts=4, login_window=60)
    )
    with app.state.ctx.store.session() as session:
        users.create_user(session, "mallory", PASSWORD, Role.viewer)
    with TestClient(app) as attacker:
        for index in range(4):
            guess = {"name": f"user{index}", "password": "Winter2026!"}
            assert attacker.post("/api/v1/auth/login", json=guess).status_code == 401
            if index == 1:
                own = {"name": "mallory", "password": PASSWORD}
                assert attacker.post("/api/v1/auth/login", json=own).status_code == 200
        guess = {"name": "user9", "password": "Winter2026!"}
        assert attacker.post("/api/v1/auth/login", json=guess).status_code == 429


def test_unknown_user_and_wrong_password_get_the_same_answer(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    with app.state.ctx.store.session() as session:
        users.create_user(session, "alice", PASSWORD, Role.viewer)
    with TestClient(app) as browser:
        unknown = browser.post("/api/v1/auth/login", json={"name": "nobody", "password": "x" * 9})
        wrong = browser.post("/api/v1/auth/login", json={"name": "alice", "password": "x" * 9})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()


def test_logging_in_again_ends_the_session_the_browser_had(tmp_path: Path) -> None:
    # A session id planted in the browser before login must not stay usable after it.
    app = create_app(make_settings(tmp_path))
    with app.state.ctx.store.session() as session:
        users.create_user(session, "alice", PASSWORD, Role.viewer)
    with TestClient(app) as browser:
        login = {"name": "alice", "password": PASSWORD}
        assert browser.post("/api/v1/auth/login", json=login).status_code == 200
        first = browser.cookies.get("kvmgr_session")
        assert browser.post("/api/v1/auth/login", json=login).status_code == 200
        second = browser.cookies.get("kvmgr_session")
        assert first and second and first != second
        with TestClient(app) as other:
            other.cookies.set("kvmgr_session", first)
            assert other.get("/api/v1/auth/me").status_code == 401
