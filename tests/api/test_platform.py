"""Serving rules, security headers, escaping, console tokens, metrics, and live events."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import libvirt
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kvmgr.api.app import create_app
from kvmgr.api.security import ConsoleTokens
from kvmgr.api.settings import Settings, check_serving
from kvmgr.errors import InvalidInput
from kvmgr.store.models import Role
from kvmgr.store.users import Principal
from tests.api.conftest import TEST_URI, USERS, As, make_settings

ALICE = Principal(1, "alice", Role.operator, None)


# ------------------------------------------------------------------ serving rules
def test_non_loopback_needs_tls_or_insecure(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, listen="0.0.0.0:8080", secret_key="s" * 40)
    with pytest.raises(InvalidInput, match="without TLS"):
        check_serving(settings)
    assert check_serving(settings.model_copy(update={"insecure": True})).insecure


def test_non_loopback_needs_a_secret(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, listen="192.0.2.1:8443", insecure=True)
    with pytest.raises(InvalidInput, match="KVMGR_SECRET_KEY"):
        check_serving(settings)


def test_loopback_generates_and_keeps_a_secret(tmp_path: Path) -> None:
    first = check_serving(Settings(state_dir=tmp_path, listen="127.0.0.1:8080"))
    second = check_serving(Settings(state_dir=tmp_path, listen="[::1]:8080"))
    assert first.secret_key and first.secret_key == second.secret_key
    assert os.stat(tmp_path / "secret_key").st_mode & 0o777 == 0o600


def test_bad_listen_and_weak_secret(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="HOST:PORT"):
        check_serving(Settings(state_dir=tmp_path, listen="localhost"))
    with pytest.raises(InvalidInput, match="at least 32"):
        check_serving(Settings(state_dir=tmp_path, secret_key="short"))


def test_serve_cli_refuses_a_public_address_without_tls() -> None:
    from typer.testing import CliRunner

    from kvmgr.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--listen", "0.0.0.0:8080"])
    assert result.exit_code == 1
    assert "without TLS" in result.output


# ------------------------------------------------------------------ headers and escaping
def test_security_headers(client: TestClient) -> None:
    headers = client.get("/login").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert client.get("/api/v1/vms").headers["x-content-type-options"] == "nosniff"


def test_templates_escape_user_text(app: FastAPI) -> None:
    from starlette.requests import Request

    from kvmgr.api.routes.pages import render

    hostile = Principal(9, "<script>alert(1)</script>", Role.viewer, None, '"><x>')
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "app": app}
    body = bytes(render(Request(scope), hostile, "tasks.html").body).decode()
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert '"><x>' not in body


def test_viewer_pages_show_no_action_buttons(app: FastAPI, as_user: dict[str, As]) -> None:
    viewer_page = as_user["viewer"].get("/vms/test").text
    admin_page = as_user["admin"].get("/vms/test").text
    assert 'data-action="start"' in admin_page and "action-delete" in admin_page
    assert "data-action" not in viewer_page and "action-delete" not in viewer_page


# ------------------------------------------------------------------ console tokens
def test_console_tokens_are_single_use_bound_and_expiring() -> None:
    tokens = ConsoleTokens(lifetime=0.3)
    token = tokens.issue(ALICE, "t-api-a", "serial")
    assert tokens.redeem(token, "t-api-a", "serial") == ALICE
    assert tokens.redeem(token, "t-api-a", "serial") is None  # used up
    other_vm = tokens.issue(ALICE, "t-api-a", "serial")
    assert tokens.redeem(other_vm, "t-api-b", "serial") is None
    assert tokens.redeem(other_vm, "t-api-a", "serial") is None  # a failed try uses it up too
    wrong_kind = tokens.issue(ALICE, "t-api-a", "serial")
    assert tokens.redeem(wrong_kind, "t-api-a", "vnc") is None
    late = tokens.issue(ALICE, "t-api-a", "vnc")
    time.sleep(0.35)
    assert tokens.redeem(late, "t-api-a", "vnc") is None


def test_console_token_route_checks_the_vm_owner(as_user: dict[str, As]) -> None:
    refused = as_user["op3"].post("/api/v1/vms/test/console-token", json={"kind": "serial"})
    assert refused.status_code == 403
    granted = as_user["admin"].post("/api/v1/vms/test/console-token", json={"kind": "vnc"})
    assert granted.status_code == 200
    assert granted.json()["expires_in"] < 60
    assert granted.json()["url"].startswith("/api/v1/vms/test/vnc?token=")


def test_a_token_for_one_vm_does_not_open_another(
    client: TestClient, as_user: dict[str, As]
) -> None:
    from starlette.websockets import WebSocketDisconnect

    token = as_user["admin"].post("/api/v1/vms/test/console-token", json={}).json()["token"]
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect(f"/api/v1/vms/t-api-other/console?token={token}"),
    ):
        pass
    assert refused.value.code == 4403


# ------------------------------------------------------------------ metrics
def test_metrics_exposition(as_user: dict[str, As]) -> None:
    response = as_user["viewer"].get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert "# TYPE kvmgr_vm_cpu_seconds_total counter" in text
    assert 'kvmgr_vm_state{vm="test"} 1' in text
    assert "kvmgr_host_memory_bytes " in text


def test_metrics_token(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, metrics_token="m" * 40))
    with TestClient(app) as scraper:
        assert scraper.get("/metrics").status_code == 401
        wrong = scraper.get("/metrics", headers={"Authorization": "Bearer " + "x" * 40})
        assert wrong.status_code == 401
        ok = scraper.get("/metrics", headers={"Authorization": "Bearer " + "m" * 40})
        assert ok.status_code == 200 and "kvmgr_host_cpus" in ok.text


# ------------------------------------------------------------------ live events (real server)
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real uvicorn on a loopback port with libvirt events on; yields (URL, admin token)."""
    from kvmgr.store import users

    app = create_app(make_settings(tmp_path_factory.mktemp("live"), events=True))
    with app.state.ctx.store.session() as session:
        users.create_user(session, "admin", "password-1", Role.admin)
        token = users.create_token(session, "admin", "tests")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(10)


def test_lifecycle_events_from_outside_kvmgr_arrive_within_a_second(
    live_server: tuple[str, str], test_vm: str
) -> None:
    url, token = live_server
    received: list[tuple[float, dict[str, object]]] = []
    subscribed = threading.Event()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.stream("GET", f"{url}/api/v1/events", headers=headers, timeout=10) as stream:
            for line in stream.iter_lines():
                if line.startswith(": subscribed"):
                    subscribed.set()
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event["type"] == "vm":  # stats samples may come in between
                        received.append((time.monotonic(), event))
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert subscribed.wait(5)
    # Change the VM through a libvirt connection of our own, as virsh would.
    outside = libvirt.open(TEST_URI)
    try:
        changed_at = time.monotonic()
        outside.lookupByName(test_vm).suspend()
    finally:
        outside.close()
    listener.join(5)
    assert received, "no event arrived"
    arrived_at, event = received[0]
    assert event["type"] == "vm" and event["name"] == test_vm and event["event"] == "suspended"
    assert arrived_at - changed_at < 1.0


def test_users_of_every_role_exist_for_these_tests() -> None:
    assert {role for role, _group in USERS.values()} == {Role.viewer, Role.operator, Role.admin}
