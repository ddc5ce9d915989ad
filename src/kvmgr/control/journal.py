"""The database journal of one operation: :class:`kvmgr.services.steps.Steps` over the store.

Each :meth:`JournalSteps.undo_with` / :meth:`JournalSteps.finish_with` commits its record before
it returns, that is before the service's step acts: a process killed right after the step (or in
the middle of it) leaves a record saying how to undo or finish it, which
:mod:`kvmgr.control.recovery` runs from another process.  The records are also kept in memory so
the owning process can undo in-process when the operation raises.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Table, func, select, update

from kvmgr.control.models import Operation, OperationRecord
from kvmgr.services.steps import ACTIONS, Record
from kvmgr.store.db import Store

_RECORDS: Table = OperationRecord.__table__  # type: ignore[assignment]
#: Progress messages are written at most this often (the last one always is, at the end).
PROGRESS_SECONDS = 1.0


class JournalSteps:
    """The journal of operation ``operation_id``; ``say`` also gets each progress message."""

    def __init__(
        self,
        store: Store,
        operation_id: str,
        say: Callable[[str], None] | None = None,
        *,
        quick: Callable[[], AbstractContextManager[Any]] | None = None,
        use: Callable[[str, tuple[str, ...]], None] | None = None,
    ) -> None:
        self.store = store
        #: Takes the shared lease of an object the operation builds on (the plane's).
        self._use = use
        #: A transaction that need not survive a power cut, for progress messages.
        self.quick = quick or store.session
        self.operation_id = operation_id
        self.say = say
        self.undo: list[Record] = []
        self.finish: list[Record] = []
        self._seq = 0
        self._last_progress = 0.0
        self.message = ""

    def undo_with(self, action: str, /, **args: Any) -> None:
        self._record("undo", action, args)
        self.undo.append(Record(action, args))

    def finish_with(self, action: str, /, **args: Any) -> None:
        self._record("finish", action, args)
        self.finish.append(Record(action, args))

    def uses(self, kind: str, *names: str) -> None:
        if self._use is not None:
            self._use(kind, names)

    def progress(self, message: str, percent: int | None = None) -> None:
        self.message = message if percent is None else f"{message} ({percent}%)"
        if self.say is not None:
            self.say(message)
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_SECONDS:
            return
        self._last_progress = now
        with self.quick() as session:
            session.execute(
                update(Operation)
                .where(Operation.id == self.operation_id)
                .values(message=self.message)
            )

    def _record(self, phase: str, action: str, args: dict[str, Any]) -> None:
        if action not in ACTIONS:
            raise RuntimeError(f"recovery action {action!r} is not registered (see services.steps)")
        # Fail here, in the service's process, rather than in recovery: args must be JSON.
        json.dumps(args)
        self._seq += 1
        # Synced (this is what recovery reads), and one statement: one round trip on PostgreSQL.
        with self.store.single() as session:
            session.execute(
                _RECORDS.insert(),
                {
                    "operation_id": self.operation_id,
                    "seq": self._seq,
                    "phase": phase,
                    "action": action,
                    "args": args,
                },
            )


def load_records(store: Store, operation_id: str) -> tuple[list[Record], list[Record]]:
    """The (undo, finish) records of an operation, in the order they were written."""
    with store.session() as session:
        rows = session.scalars(
            select(OperationRecord)
            .where(OperationRecord.operation_id == operation_id)
            .order_by(OperationRecord.seq)
        ).all()
        undo = [Record(row.action, dict(row.args)) for row in rows if row.phase == "undo"]
        finish = [Record(row.action, dict(row.args)) for row in rows if row.phase == "finish"]
    return undo, finish


def record_count(store: Store, operation_id: str) -> int:
    with store.session() as session:
        count = session.scalar(
            select(func.count()).where(OperationRecord.operation_id == operation_id)
        )
    return int(count or 0)
