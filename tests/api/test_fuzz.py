"""Property test over the OpenAPI schema: whatever an admin sends to any route, never a 5xx.

hypothesis draws path values, query values and JSON bodies (including hostile strings) for every
operation the app's own OpenAPI document lists.  Destructive operations are aimed at names under
the t-api- prefix that do not exist, so the run cannot harm the test driver's objects.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import As

_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["t-api-none", "", "..", "../etc", "<script>", "'\"", "0", "-1", "1G", "%00"]),
)
_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        _TEXT,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_TEXT, children, max_size=4)
    ),
    max_leaves=8,
)


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            found.append((method.upper(), path, operation))
    return found


def _body_for(operation: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "requestBody" not in operation:
        return st.none()
    return st.one_of(_JSON, st.fixed_dictionaries({"name": _TEXT}, optional={"kind": _TEXT}))


def test_no_route_answers_5xx(client: TestClient, as_user: dict[str, As]) -> None:
    admin = as_user["admin"]
    schema = admin.get("/api/openapi.json").json()
    operations = [
        op
        for op in _operations(schema)
        # the event stream never ends; logout would end nothing of the token caller anyway
        if op[1] not in ("/api/v1/events",)
    ]

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        index=st.integers(0, len(operations) - 1),
        segment=_TEXT,
        query=st.dictionaries(st.sampled_from(["force", "limit", "timeout", "user"]), _TEXT),
        data=st.data(),
    )
    def probe(index: int, segment: str, query: dict[str, str], data: st.DataObject) -> None:
        method, path, operation = operations[index]
        target = segment if method == "GET" else "t-api-fz-" + re.sub(r"[^a-z]", "", segment)
        quoted = urllib.parse.quote(target, safe="") or "x"  # any text, as a client would send it
        url = re.sub(r"\{[^}]+\}", lambda _m: quoted, path)
        body = data.draw(_body_for(operation))
        response = admin.request(method, url, params=query, json=body)
        assert response.status_code < 500, (method, url, body, response.text[:300])

    probe()
