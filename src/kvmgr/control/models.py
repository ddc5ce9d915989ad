"""Tables of the control plane: leases, operations and their journal records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from kvmgr.store.models import Base, utcnow

#: Operation states.  ``running`` with a dead holder is what recovery looks for.
RUNNING, DONE, FAILED, UNDONE, RECOVERED, RECOVERY_FAILED = (
    "running",
    "done",
    "failed",
    "undone",
    "recovered",
    "recovery-failed",
)
STATES = (RUNNING, DONE, FAILED, UNDONE, RECOVERED, RECOVERY_FAILED)


class Lease(Base):
    """Who works on an object now ("vm:<host>/<uuid>", "op:<operation id>"), until ``expires``.

    The holder renews ``expires`` while it lives; a row past it is free to take over.
    """

    __tablename__ = "leases"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))  # "<hostname>:<pid>:<process start>"
    operation: Mapped[str] = mapped_column(String(200))
    actor: Mapped[str] = mapped_column(String(64))
    acquired: Mapped[datetime] = mapped_column(default=utcnow)
    expires: Mapped[datetime] = mapped_column(index=True)


class Operation(Base):
    """One mutating operation: its intent, its owner, and how it ended."""

    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    holder: Mapped[str] = mapped_column(String(128))
    #: The lease keys the operation held, so recovery takes them again before it acts.
    keys: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), index=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    finished: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    message: Mapped[str] = mapped_column(Text, default="")


class OperationRecord(Base):
    """One journal record: before a step acts, how to undo it (or, past no return, finish it)."""

    __tablename__ = "operation_records"

    operation_id: Mapped[str] = mapped_column(
        ForeignKey("operations.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    phase: Mapped[str] = mapped_column(String(8))  # undo | finish
    action: Mapped[str] = mapped_column(String(64))
    args: Mapped[dict[str, Any]] = mapped_column()
