"""Dashboard CPU and memory are pushed: one bulk stats sample per interval, shared by every
subscribed client (never one libvirt call per client or per VM); while nobody listens the samples
go on at the same rate, for the charts' history only (tests/api/test_stats_history_api.py)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from kvmgr.api.app import create_app
from kvmgr.store import users
from kvmgr.store.models import Role
from tests.api.conftest import make_settings

INTERVAL = 0.25


@pytest.fixture(scope="module")
def stats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str, str]]:
    app = create_app(make_settings(tmp_path_factory.mktemp("stats"), stats_interval=INTERVAL))
    with app.state.ctx.store.session() as session:
        users.create_user(session, "viewer", "password-1", Role.viewer)
        token = users.create_token(session, "viewer", "tests")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield app, f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(10)


def _listen(url: str, token: str, seconds: float, into: list[dict[str, Any]]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + seconds
    with httpx.stream("GET", f"{url}/api/v1/events", headers=headers, timeout=10) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["type"] == "stats":
                    into.append(event)
            if time.monotonic() > deadline:
                return


def test_three_dashboards_share_one_sample_per_interval(
    stats_server: tuple[FastAPI, str, str],
) -> None:
    app, url, token = stats_server
    publisher = app.state.ctx.stats
    seen: list[list[dict[str, Any]]] = [[], [], []]
    before = publisher.samples
    started = time.monotonic()
    listeners = [
        threading.Thread(target=_listen, args=(url, token, 2.0, events)) for events in seen
    ]
    for listener in listeners:
        listener.start()
    for listener in listeners:
        listener.join(10)
    elapsed = time.monotonic() - started
    taken = publisher.samples - before

    assert all(len(events) >= 3 for events in seen), [len(events) for events in seen]
    # Each client saw the same samples (same sequence numbers), not samples of its own...
    common = set.intersection(*({e["seq"] for e in events} for events in seen))
    assert len(common) >= 3
    # ...and the server took one bulk sample per interval for all three together.
    assert taken <= elapsed / INTERVAL + 1, (taken, elapsed)
    last = seen[0][-1]
    rows = {row["name"]: row for row in last["vms"]}
    assert rows["test"]["state"] == "running" and "memory_total" in rows["test"]
    # The test driver reports only state; CPU rates of a real guest: tests/e2e/test_vnc.py.
    assert "cpu_percent" in rows["test"]


def test_one_sample_per_interval_while_nobody_listens(
    stats_server: tuple[FastAPI, str, str],
) -> None:
    app, _url, _token = stats_server
    deadline = time.monotonic() + 5
    while app.state.ctx.bus.subscriber_count and time.monotonic() < deadline:
        time.sleep(0.05)  # the previous test's streams are being closed
    assert app.state.ctx.bus.subscriber_count == 0
    before, started = app.state.ctx.stats.samples, time.monotonic()
    time.sleep(INTERVAL * 6)
    taken = app.state.ctx.stats.samples - before
    assert 2 <= taken <= (time.monotonic() - started) / INTERVAL + 1, taken
