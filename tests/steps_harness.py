"""Cutting a multi-step operation right after its n-th journal record, and recovering it as a
process that never saw it would (shared by the unit and integration journal tests)."""

from __future__ import annotations

import json
from typing import Any

from kvmgr.connect import Connection
from kvmgr.services.steps import LocalSteps, Record, run_recovery


class Cut(Exception):
    """Raised right after the n-th journal record: the process 'dies' there."""


class CutSteps(LocalSteps):
    def __init__(self, cut_at: int | None = None) -> None:
        super().__init__()
        self.cut_at = cut_at
        self.count = 0
        self.names: list[str] = []

    def undo_with(self, action: str, /, **args: Any) -> None:
        super().undo_with(action, **args)
        self._tick(action)

    def finish_with(self, action: str, /, **args: Any) -> None:
        super().finish_with(action, **args)
        self._tick(action)

    def _tick(self, action: str) -> None:
        self.count += 1
        self.names.append(action)
        if self.count == self.cut_at:
            raise Cut(action)


def recover_elsewhere(conn: Connection, journal: LocalSteps) -> list[str]:
    """Run the records as another process would: from their JSON, by action name."""

    def copy(records: list[Record]) -> list[Record]:
        return [Record(r.action, json.loads(json.dumps(r.args))) for r in records]

    return run_recovery(conn, copy(journal.undo), copy(journal.finish))
