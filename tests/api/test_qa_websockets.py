"""QA of the console websockets: a page of another origin cannot open one, even with a token
(cross-site websocket hijacking: browsers send cookies and any Origin on a websocket handshake,
and CORS does not apply to websockets)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from kvmgr.api.routes.console import CLOSE_REFUSED
from tests.api.conftest import As


def _token(as_user: dict[str, As], kind: str) -> str:
    answer = as_user["admin"].post("/api/v1/vms/test/console-token", json={"kind": kind})
    assert answer.status_code == 200
    token: str = answer.json()["token"]
    return token


@pytest.mark.parametrize(("kind", "path"), [("serial", "console"), ("vnc", "vnc")])
@pytest.mark.parametrize("origin", ["https://evil.example", "http://testserver.evil.example"])
def test_a_websocket_from_another_origin_is_refused(
    client: TestClient, as_user: dict[str, As], kind: str, path: str, origin: str
) -> None:
    token = _token(as_user, kind)
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect(
            f"/api/v1/vms/test/{path}?token={token}", headers={"Origin": origin}
        ),
    ):
        pass
    assert refused.value.code == CLOSE_REFUSED


@pytest.mark.parametrize(("kind", "path"), [("serial", "console"), ("vnc", "vnc")])
def test_a_websocket_from_the_own_origin_is_admitted(
    client: TestClient, as_user: dict[str, As], kind: str, path: str
) -> None:
    # The test driver's VM has no real console, so the socket then closes with an error of the
    # console itself (not the refusal code): admission passed.
    token = _token(as_user, kind)
    url = f"/api/v1/vms/test/{path}?token={token}"
    try:
        with client.websocket_connect(url, headers={"Origin": "http://testserver"}) as socket:
            socket.receive()
    except WebSocketDisconnect as closed:
        assert closed.code != CLOSE_REFUSED
