"""``GET /api/v1/vms/{name}/stats/history`` and ``GET /api/v1/host/stats/history``: the sampler
of ``kvmgr serve`` fills them without any client listening; read like the VM and the host are
(every logged-in user; a VM that is not there is a 404; no login is a 401)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kvmgr.api.app import create_app
from kvmgr.api.stats_history import METRICS
from kvmgr.store import users
from kvmgr.store.models import Role
from tests.api.conftest import As, make_settings

INTERVAL = 0.1


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    application = create_app(
        make_settings(tmp_path_factory.mktemp("history"), stats_interval=INTERVAL)
    )
    with application.state.ctx.store.session() as session:
        users.create_user(session, "viewer", "password-1", Role.viewer)
        users.create_user(session, "op1", "password-1", Role.operator, "team-a")
    yield application


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as anonymous:
        yield anonymous


def _as(app: FastAPI, client: TestClient, name: str) -> As:
    with app.state.ctx.store.session() as session:
        return As(client, users.create_token(session, name, "tests"))


def _wait_points(caller: As, path: str, points: int) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        answer = caller.get(path)
        assert answer.status_code == 200, answer.text
        body: dict[str, object] = answer.json()
        if int(str(body["points"])) >= points or time.monotonic() > deadline:
            return body
        time.sleep(INTERVAL)


def test_history_fills_with_nobody_listening(app: FastAPI, client: TestClient) -> None:
    viewer = _as(app, client, "viewer")
    assert app.state.ctx.bus.subscriber_count == 0
    body = _wait_points(viewer, "/api/v1/vms/test/stats/history", 5)
    assert body["sampled"] is True and body["name"] == "test"
    assert body["host"] == app.state.ctx.own_host()
    assert int(str(body["points"])) >= 5
    series = body["series"]
    assert isinstance(series, dict) and set(series) == {"t", *METRICS}
    times = series["t"]
    assert times == sorted(times) and all(len(series[m]) == len(times) for m in METRICS)
    assert abs(times[-1] - time.time()) < 5  # wall-clock seconds, what a chart's axis shows
    # the test driver's VM has a balloon (its memory) but no counters: rates are unknown
    assert series["running"][-1] == 1 and series["cpu_percent"][-1] is None

    assert body["units"]["net_rx_bps"] == "bytes/s"  # type: ignore[index]
    host = _wait_points(viewer, "/api/v1/host/stats/history", 5)["series"]
    assert isinstance(host, dict)
    assert host["memory_total"][-1] > 0 and host["memory_used"][-1] is not None
    assert host["running"][-1] is None
    # disk and network of the host are its VMs' sums: 0 here, known from the second sample
    assert host["disk_read_bps"][-1] == 0.0 and host["net_tx_bps"][-1] == 0.0


def test_one_bulk_sample_per_interval(app: FastAPI, client: TestClient) -> None:
    sampler = app.state.ctx.stats
    before, started = sampler.samples, time.monotonic()
    time.sleep(INTERVAL * 10)
    taken = sampler.samples - before
    elapsed = time.monotonic() - started
    assert 3 <= taken <= elapsed / INTERVAL + 1, (taken, elapsed)
    assert 0 < sampler.last_seconds < INTERVAL


def test_read_like_the_vm(app: FastAPI, client: TestClient) -> None:
    # Every logged-in user reads every VM (docs/SECURITY.md: VM read), so its history too; a VM
    # that is not there answers 404 as GET /api/v1/vms/{name} does, and nobody reads without a
    # login.
    viewer, operator = _as(app, client, "viewer"), _as(app, client, "op1")
    for caller in (viewer, operator):
        assert caller.get("/api/v1/vms/test/stats/history").status_code == 200
        assert caller.get("/api/v1/vms/test").status_code == 200
        missing = caller.get("/api/v1/vms/t-hist-none/stats/history")
        assert missing.status_code == 404, missing.text
        assert caller.get("/api/v1/vms/t-hist-none").status_code == 404
        assert "GET /api/v1/vms" in missing.json()["hint"]
    for path in ("/api/v1/vms/test/stats/history", "/api/v1/host/stats/history"):
        assert client.get(path).status_code == 401


def test_a_host_this_replica_does_not_sample(app: FastAPI, client: TestClient) -> None:
    viewer = _as(app, client, "viewer")
    unknown = viewer.get("/api/v1/host/stats/history", params={"host": "t-hist-nohost"})
    assert unknown.status_code == 404, unknown.text  # like every route's ?host=
