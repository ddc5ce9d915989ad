"""Every route of the app, enumerated from the app itself: an anonymous caller is refused, and a
caller below the route's role is refused.  A new route without a role guard fails here."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount
from starlette.websockets import WebSocketDisconnect

from kvmgr.store.models import Role
from tests.api.conftest import As, all_routes

#: Routes anyone may call: logging in, and the static files of the login page.
PUBLIC = {("POST", "/api/v1/auth/login"), ("GET", "/login")}


def min_role(route: APIRoute) -> Role | None:
    """The role the route's guard dependency demands (None: no guard found)."""
    stack = list(route.dependant.dependencies)
    while stack:
        dependency = stack.pop()
        role = getattr(dependency.call, "min_role", None)
        if role is not None:
            return role  # type: ignore[no-any-return]
        stack.extend(dependency.dependencies)
    return None


def concrete(path: str) -> str:
    # Any value works: the role check runs before the route looks the object up.
    return re.sub(r"\{[^}]+\}", "t-api-none", path)


def http_routes(app: FastAPI) -> list[tuple[str, str, APIRoute]]:
    found = []
    for route in all_routes(app):
        if isinstance(route, APIRoute):
            for method in sorted(route.methods - {"HEAD"}):
                found.append((method, route.path, route))
    return found


def test_the_app_has_the_routes_the_issue_asks_for(app: FastAPI) -> None:
    paths = {path for _method, path, _route in http_routes(app)}
    for wanted in (
        "/api/v1/vms",
        "/api/v1/vms/{name}",
        "/api/v1/networks",
        "/api/v1/pools",
        "/api/v1/isos",
        "/api/v1/host/info",
        "/api/v1/host/check",
        "/api/v1/tasks",
        "/api/v1/events",
        "/api/v1/users",
        "/api/v1/audit",
        "/metrics",
        "/api/docs",
    ):
        assert wanted in paths
    assert len(paths) > 40


def test_every_route_refuses_anonymous_callers(app: FastAPI, client: TestClient) -> None:
    checked = 0
    for method, path, _route in http_routes(app):
        if (method, path) in PUBLIC:
            continue
        response = client.request(method, concrete(path), follow_redirects=False, json={})
        if response.status_code == 303:  # a page: to the login form
            assert response.headers["location"].startswith("/login"), path
        else:
            assert response.status_code == 401, (method, path, response.status_code)
        checked += 1
    assert checked > 40


def test_every_route_has_a_role_guard(app: FastAPI) -> None:
    unguarded = [
        (method, path)
        for method, path, route in http_routes(app)
        if (method, path) not in PUBLIC and path != "/metrics" and min_role(route) is None
    ]
    assert unguarded == []


@pytest.mark.parametrize("caller", ["viewer", "op1"])
def test_every_route_refuses_callers_below_its_role(
    app: FastAPI, as_user: dict[str, As], caller: str
) -> None:
    caller_role = {"viewer": Role.viewer, "op1": Role.operator}[caller]
    refused = 0
    for method, path, route in http_routes(app):
        role = min_role(route)
        if role is None or caller_role.at_least(role):
            continue
        response = as_user[caller].request(method, concrete(path), json={})
        assert response.status_code == 403, (caller, method, path, response.status_code)
        refused += 1
    assert refused > 10


def test_viewers_may_not_change_anything(app: FastAPI, as_user: dict[str, As]) -> None:
    # Every route that changes something needs at least operator, except the caller's own tokens
    # and logout (a viewer may manage their own credentials).
    own = {"/api/v1/auth/logout", "/api/v1/auth/tokens", "/api/v1/auth/tokens/{token_id}"}
    for method, path, route in http_routes(app):
        if method == "GET" or (method, path) in PUBLIC or path in own:
            continue
        role = min_role(route)
        assert role is not None and role.at_least(Role.operator), (method, path)


def _ws_paths(app: FastAPI) -> list[str]:
    return [route.path for route in all_routes(app) if isinstance(route, APIWebSocketRoute)]


def test_websockets_refuse_without_a_valid_token(app: FastAPI, client: TestClient) -> None:
    paths = _ws_paths(app)
    assert len(paths) == 2
    for path in paths:
        for query in ("", "?token=forged"):
            with (
                pytest.raises(WebSocketDisconnect) as refused,
                client.websocket_connect(concrete(path) + query),
            ):
                pass
            assert refused.value.code == 4403


def test_static_mount_only_serves_files(app: FastAPI, client: TestClient) -> None:
    mounts: list[Any] = [route for route in all_routes(app) if isinstance(route, Mount)]
    assert [mount.path for mount in mounts] == ["/static"]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../api/app.py").status_code == 404


def test_every_mutating_route_needs_the_csrf_token_with_a_cookie(app: FastAPI) -> None:
    """A logged-in browser (session cookie, admin) without X-CSRF-Token changes nothing."""
    from tests.api.conftest import PASSWORD

    checked = 0
    with TestClient(app) as browser:
        answer = browser.post("/api/v1/auth/login", json={"name": "admin", "password": PASSWORD})
        assert answer.status_code == 200
        for method, path, _route in http_routes(app):
            if method in ("GET", "HEAD", "OPTIONS") or (method, path) in PUBLIC:
                continue
            response = browser.request(method, concrete(path), json={})
            assert response.status_code == 403, (method, path, response.status_code)
            assert "CSRF" in response.json()["error"], (method, path)
            checked += 1
    assert checked > 25
