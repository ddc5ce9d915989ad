"""Fixtures of the API tests: one app per module on libvirt's test driver and a SQLite file, with
users of every role, and clients that log in by API token or by session cookie."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kvmgr.api.app import create_app
from kvmgr.api.settings import Settings
from kvmgr.store import users
from kvmgr.store.models import Role

PASSWORD = "correct horse battery"
TEST_URI = "test:///default"
#: name -> (role, group)
USERS = {
    "admin": (Role.admin, None),
    "op1": (Role.operator, "team-a"),
    "op2": (Role.operator, "team-a"),
    "op3": (Role.operator, "team-b"),
    "viewer": (Role.viewer, None),
}


def make_settings(state_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "uri": TEST_URI,
        "secret_key": "k" * 40,
        "events": False,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    application = create_app(make_settings(tmp_path_factory.mktemp("api")))
    with application.state.ctx.store.session() as session:
        for name, (role, group) in USERS.items():
            users.create_user(session, name, PASSWORD, role, group)
    yield application


@pytest.fixture(scope="module")
def tokens(app: FastAPI) -> dict[str, str]:
    with app.state.ctx.store.session() as session:
        return {name: users.create_token(session, name, "tests") for name in USERS}


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    """An anonymous client; the lifespan (task runner, store) runs once per module."""
    with TestClient(app) as anonymous:
        yield anonymous


class As:
    """Requests as one user with their API token."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.client.request(method, url, headers=self.headers, **kwargs)

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.request("POST", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Any:
        return self.request("DELETE", url, **kwargs)


@pytest.fixture(scope="module")
def as_user(client: TestClient, tokens: dict[str, str]) -> dict[str, As]:
    return {name: As(client, token) for name, token in tokens.items()}


@pytest.fixture
def test_vm() -> Iterator[str]:
    """The test driver's own running VM 'test', put back to running afterwards."""
    conn = libvirt.open(TEST_URI)
    try:
        yield "test"
    finally:
        dom = conn.lookupByName("test")
        state = dom.state()[0]
        if state == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
        elif state != libvirt.VIR_DOMAIN_RUNNING:
            dom.create()
        conn.close()


def remove_vm(name: str) -> None:
    """Remove a VM of the test driver whatever its state (cleanup of tests that made one)."""
    conn = libvirt.open(TEST_URI)
    try:
        with contextlib.suppress(libvirt.libvirtError):
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    finally:
        conn.close()


def all_routes(app: FastAPI) -> list[Any]:
    """The app's routes, flattened (FastAPI keeps included routers as nodes of their own).

    Every kvmgr router carries its whole prefix itself, so a route's path is its URL path.
    """
    found: list[Any] = []
    stack = list(app.routes)
    while stack:
        route = stack.pop(0)
        included = getattr(route, "original_router", None)
        if included is not None:
            stack.extend(included.routes)
        else:
            found.append(route)
    return found
