"""The audit log (admins only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from kvmgr.api.deps import Admin, Ctx
from kvmgr.store import audit as audit_store

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", summary="Recent mutating actions, newest first")
def list_audit(
    _who: Admin,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    user: Annotated[str | None, Query(max_length=64)] = None,
    target: Annotated[str | None, Query(max_length=200)] = None,
) -> list[dict[str, Any]]:
    with ctx.store.session() as session:
        return [
            {
                "id": entry.id,
                "at": entry.at.isoformat(),
                "user": entry.user,
                "action": entry.action,
                "target": entry.target,
                "result": entry.result,
                "detail": entry.detail,
            }
            for entry in audit_store.entries(session, limit=limit, user=user, target=target)
        ]
