"""No API route answers with a Python error when the daemon dies in the middle of a request.

The app talks to the real libvirtd through a proxy that cuts the connection after the n-th RPC
message of a request, for every n the request sends (see tests/sweep/proxy.py).  Every GET route
of the OpenAPI document is swept (with a real VM where a route names one); the app must answer
with a kvmgr error (JSON with "error" and "kind"), then reconnect for the next request.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kvmgr.api.app import create_app
from kvmgr.connect import Connection
from kvmgr.store import users
from kvmgr.store.models import Role
from tests.api.conftest import make_settings
from tests.integration.conftest import remove_vm
from tests.sweep.proxy import CuttingProxy, cut_points, cutting_proxy, small_domain_xml

VM = "t-sweep-api-cut"
SYSTEM_SOCKET = "/run/libvirt/libvirt-sock"
MAX_CUTS = 6
#: Routes that never answer (streams), and what they would need.
NOT_SWEPT = {"/api/v1/events": "an endless event stream"}

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def sweep_vm(conn: Connection) -> Iterator[str]:
    remove_vm(conn, VM)
    conn.virconn.defineXML(small_domain_xml(VM))
    yield VM
    remove_vm(conn, VM)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, libvirt_uri: str) -> Iterator[CuttingProxy]:
    with cutting_proxy(tmp_path_factory.mktemp("cut"), SYSTEM_SOCKET) as running:
        yield running


@pytest.fixture(scope="module")
def admin(
    proxy: CuttingProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = make_settings(tmp_path_factory.mktemp("api"), uri=proxy.uri, stats_interval=0)
    app = create_app(settings)
    with app.state.ctx.store.session() as session:
        users.create_user(session, "root-admin", "sweep password 1", Role.admin, None)
        token = users.create_token(session, "root-admin", "sweep")
    with TestClient(app) as client:
        yield client, {"Authorization": f"Bearer {token}"}


def _get_paths(client: TestClient, headers: dict[str, str], vm: str) -> list[str]:
    schema: dict[str, Any] = client.get("/api/openapi.json", headers=headers).json()
    paths = []
    for path, item in schema["paths"].items():
        if "get" in item and path not in NOT_SWEPT:
            paths.append(re.sub(r"\{(name|vm)\}", vm, re.sub(r"\{pool\}", "default", path)))
    return [re.sub(r"\{[^}]+\}", "t-sweep-missing", path) for path in paths]


def test_every_get_route_survives_the_daemon_dying(
    admin: tuple[TestClient, dict[str, str]], proxy: CuttingProxy, sweep_vm: str
) -> None:
    client, headers = admin
    paths = _get_paths(client, headers, sweep_vm)
    assert len(paths) > 20
    for path in paths:
        proxy.cut_after = None
        client.get("/api/v1/vms", headers=headers)  # (re)connect
        before = proxy.messages
        client.get(path, headers=headers)
        sent = proxy.messages - before
        for cut in cut_points(sent, MAX_CUTS):
            proxy.cut_after = None
            client.get("/api/v1/vms", headers=headers)  # reconnect after the previous cut
            proxy.cut_after = proxy.messages + cut
            answer = client.get(path, headers=headers)  # an escaped exception raises here
            if answer.status_code >= 500:
                body = answer.json()
                assert {"error", "kind"} <= body.keys(), f"{path} cut at {cut}: {answer.text}"
    proxy.cut_after = None
    assert client.get("/api/v1/vms", headers=headers).status_code == 200  # and it came back
