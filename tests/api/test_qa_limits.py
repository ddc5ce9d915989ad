"""QA of request bodies: an oversized body is refused before it is read into memory, and JSON
that does not parse gets a message saying so."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.testclient import TestClient

from kvmgr.api.app import MAX_BODY_BYTES
from tests.api.conftest import As


def test_an_oversized_body_is_refused_with_413(client: TestClient) -> None:
    body = b'{"name": "' + b"a" * (MAX_BODY_BYTES + 1) + b'", "password": "x"}'
    answer = client.post(
        "/api/v1/auth/login", content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413
    assert "MiB" in answer.json()["error"]
    assert answer.json()["hint"]


def test_an_oversized_chunked_body_is_refused_with_413(as_user: dict[str, As]) -> None:
    # No Content-Length: the limit must count what arrives.
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"a" * 65536
        yield b'"}'

    admin = as_user["admin"]
    headers = {**admin.headers, "Content-Type": "application/json"}
    answer = admin.client.post("/api/v1/networks", content=chunks(), headers=headers)
    assert answer.status_code == 413


def test_a_body_at_the_limit_is_still_read(client: TestClient) -> None:
    answer = client.post("/api/v1/auth/login", json={"name": "nobody", "password": "x" * 1000})
    assert answer.status_code == 401


def test_json_that_does_not_parse_says_so(as_user: dict[str, As]) -> None:
    admin = as_user["admin"]
    headers = {**admin.headers, "Content-Type": "application/json"}
    answer = admin.client.post("/api/v1/networks", content=b'{"name": "x"', headers=headers)
    assert answer.status_code == 422
    assert "not valid JSON" in answer.json()["error"]
    assert "JSON object" in answer.json()["hint"]
