"""GET /api/v1/vms is serialised by the route itself (speed): its answer must still match the
documented VMRow model, keep the per-VM permission, and carry the security headers."""

from __future__ import annotations

from fastapi import FastAPI

from kvmgr.api.routes.vms import VMRow
from kvmgr.store.models import ApiToken, User
from tests.api.conftest import As


def test_every_row_is_exactly_the_documented_model(as_user: dict[str, As]) -> None:
    answer = as_user["viewer"].get("/api/v1/vms")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    rows = answer.json()
    assert rows, "the test driver has the VM 'test'"
    for row in rows:
        assert set(row) == set(VMRow.model_fields)
        VMRow.model_validate(row, strict=True)


def test_may_act_is_decided_per_caller(as_user: dict[str, As]) -> None:
    def may_act(caller: str) -> bool:
        rows = as_user[caller].get("/api/v1/vms").json()
        return bool(next(row for row in rows if row["name"] == "test")["may_act"])

    # 'test' has no owner: only an admin may act on it.
    assert may_act("admin") is True
    assert may_act("op1") is False
    assert may_act("viewer") is False


def test_security_headers_still_on_every_answer(as_user: dict[str, As]) -> None:
    for answer in (as_user["viewer"].get("/api/v1/vms"), as_user["viewer"].get("/nowhere")):
        assert answer.headers["x-frame-options"] == "DENY"
        assert "default-src 'self'" in answer.headers["content-security-policy"]
    assert as_user["viewer"].get("/api/v1/vms").headers["cache-control"] == "no-store"


def test_schema_documents_the_rows(as_user: dict[str, As]) -> None:
    schema = as_user["viewer"].get("/api/openapi.json").json()
    ok = schema["paths"]["/api/v1/vms"]["get"]["responses"]["200"]["content"]
    assert ok["application/json"]["schema"]["items"]["$ref"].endswith("/VMRow")
    assert "may_act" in schema["components"]["schemas"]["VMRow"]["properties"]


def test_token_last_used_is_not_rewritten_on_every_request(
    app: FastAPI, as_user: dict[str, As]
) -> None:
    as_user["op2"].get("/api/v1/vms")
    store = app.state.ctx.store
    with store.session() as session:
        token = session.query(ApiToken).join(User).filter(User.name == "op2").one()
        first = token.last_used
    as_user["op2"].get("/api/v1/vms")
    with store.session() as session:
        token = session.query(ApiToken).join(User).filter(User.name == "op2").one()
        assert first is not None and token.last_used == first
