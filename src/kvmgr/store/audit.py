"""The audit log: every mutating action, who did it, on what, when, and how it ended."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from kvmgr.store.clip import clip
from kvmgr.store.models import AuditEntry

RESULTS = ("ok", "error", "denied", "started")


def record(
    session: Session,
    *,
    user: str,
    action: str,
    target: str,
    result: str,
    detail: str = "",
    source: str = "",
) -> None:
    assert result in RESULTS, result  # a programming error, not user input
    session.add(
        AuditEntry(
            user=clip(AuditEntry, "user", user),
            action=clip(AuditEntry, "action", action),
            target=clip(AuditEntry, "target", target),
            result=clip(AuditEntry, "result", result),
            detail=detail[:4000],
            source=clip(AuditEntry, "source", source),
        )
    )


def entries(
    session: Session, *, limit: int = 200, user: str | None = None, target: str | None = None
) -> list[AuditEntry]:
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if user:
        query = query.where(AuditEntry.user == user)
    if target:
        query = query.where(AuditEntry.target == target)
    return list(session.scalars(query))
