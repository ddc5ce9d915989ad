"""Finish or undo what dead processes left: operations still ``running`` whose holder is gone.

Run on every open of the control plane by the CLI, ``kvmgr serve`` and workers, so it must be
cheap when nothing is pending: one query.  An operation is taken by its own lease
("op:<id>") before anything is done, so two processes recovering at once never both run its
records; the lease of a live owner is renewed, so a live operation is never "recovered".  The
operation's own object leases are taken too, so no new operation touches a VM while its
wreckage is being removed.  Recovery actions are idempotent (see :mod:`kvmgr.services.steps`),
so a recovery killed half way is simply run again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select

from kvmgr.connect import Connection
from kvmgr.control.journal import load_records
from kvmgr.control.leases import Leases, holder_alive, holder_id
from kvmgr.control.models import (
    RECOVERED,
    RECOVERY_FAILED,
    RUNNING,
    UNDONE,
    Operation,
    OperationRecord,
)
from kvmgr.errors import Busy, KvmgrError
from kvmgr.services.steps import Record, load_actions, run_recovery
from kvmgr.store.db import Store
from kvmgr.store.models import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What recovery did to one operation."""

    operation_id: str
    kind: str
    target: str
    host: str
    state: str  # recovered | undone | recovery-failed, or running when the host was unreachable
    message: str

    def line(self) -> str:
        return f"{self.kind} {self.target} on {self.host} ({self.operation_id[:8]}): {self.message}"


def op_key(operation_id: str) -> str:
    return f"op:{operation_id}"


def recover(
    store: Store,
    leases: Leases,
    connect: Callable[[str], Connection],
    *,
    actor: str,
    retry_failed: bool = False,
) -> list[Outcome]:
    """Recover every operation whose holder is dead; ``retry_failed`` retries failed recoveries.

    Operations another live process owns, or another recoverer is working on, are skipped.
    """
    states = [RUNNING, RECOVERY_FAILED] if retry_failed else [RUNNING]
    with store.session() as session:
        pending = [
            (op.id, op.holder, op.state)
            for op in session.scalars(select(Operation).where(Operation.state.in_(states)))
        ]
    me = holder_id()
    outcomes: list[Outcome] = []
    for operation_id, holder, state in pending:
        # Cheap skips before touching a lease: our own running work, a live local process.
        if state == RUNNING and (holder == me or holder_alive(holder) is True):
            continue
        outcome = _recover_one(store, leases, connect, operation_id, states, actor)
        if outcome is not None:
            outcomes.append(outcome)
            # The uses it held (control/uses.py: rows of their own, not the operation's keys).
            leases.clear_dead(holder)
    return outcomes


def _recover_one(
    store: Store,
    leases: Leases,
    connect: Callable[[str], Connection],
    operation_id: str,
    states: list[str],
    actor: str,
) -> Outcome | None:
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(leases.hold(op_key(operation_id), "recovery", actor=actor))
        except Busy:
            return None  # its owner lives (lease renewed), or another process recovers it
        with store.session() as session:
            op = session.get(Operation, operation_id)
            if op is None or op.state not in states:
                return None  # done by another recoverer meanwhile
            kind, target, host, keys = op.kind, op.target, op.host, list(op.keys)
        try:
            for key in sorted(keys):
                stack.enter_context(leases.hold(key, f"recovery of {kind} {target}", actor=actor))
        except Busy as err:
            log.info("recovery of %s waits: %s", operation_id, err)
            return None
        undo, finish = load_records(store, operation_id)
        outcome = _run(store, connect, host, undo, finish)
        if outcome is None:
            message = f"host {host} unreachable; recovery will be tried again"
            _mark(store, operation_id, RUNNING, None, message, keep_records=True)
            return Outcome(operation_id, kind, target, host, RUNNING, message)
        state, message, problems = outcome
        _mark(store, operation_id, state, problems, message, keep_records=bool(problems))
        log.warning("recovered %s %s (%s): %s", kind, target, operation_id, message)
        return Outcome(operation_id, kind, target, host, state, message)
    return None


def _run(
    store: Store,
    connect: Callable[[str], Connection],
    host: str,
    undo: list[Record],
    finish: list[Record],
) -> tuple[str, str, str | None] | None:
    """Run the records; (state, message, problems), or None when the host cannot be reached."""
    # The recovering process may never have imported the service that journaled the
    # operation (kvmgr ops recover after a crashed backup): load every action module, which
    # costs something only when there is something to recover.
    known = load_actions()
    unknown = sorted({r.action for r in undo + finish if r.action not in known})
    if unknown:
        # A newer kvmgr wrote them: running only the known ones could half-undo the operation.
        return RECOVERY_FAILED, describe(undo, finish), f"unknown actions {', '.join(unknown)}"
    try:
        conn = connect(host)
    except KvmgrError as err:
        log.warning("recovery cannot reach host %s: %s", host, err)
        return None
    problems = run_recovery(conn, undo, finish)
    if finish and not problems:  # a delete finished: no face is left to forget its owners
        from kvmgr.control.recovery_owners import forget_removed  # the services it reads

        forget_removed(store, conn, host, finish)
    return outcome_of(undo, finish, problems)


def outcome_of(
    undo: list[Record], finish: list[Record], problems: list[str]
) -> tuple[str, str, str | None]:
    """The state and message after ``run_recovery`` of these records met ``problems``."""
    done = describe(undo, finish)
    if problems:
        return RECOVERY_FAILED, done, "; ".join(problems)
    return (RECOVERED if finish else UNDONE), done, None


def describe(undo: list[Record], finish: list[Record]) -> str:
    """What running the records does, in words ("undid: volume.delete pool=default name=x")."""
    if finish:
        return "finished: " + "; ".join(_words(r) for r in finish)
    if undo:
        return "undid: " + "; ".join(_words(r) for r in reversed(undo))
    return "nothing had been done yet"


def _words(record: Record) -> str:
    """``action key=value ...`` for ``ops list``: the arguments that name things, each short
    (a definition's XML or a long list would bury the line; the records keep them whole)."""
    shown = []
    for key, value in record.args.items():
        if isinstance(value, dict) or value in ([], ()):
            continue
        if isinstance(value, list | tuple):
            text = ",".join(map(str, value)) if len(value) <= 3 else f"{len(value)} items"
        else:
            text = str(value)
        shown.append(f"{key}={text if len(text) <= 80 else text[:77] + '...'}")
    return " ".join([record.action, *shown])


def _mark(
    store: Store,
    operation_id: str,
    state: str,
    error: str | None,
    message: str,
    *,
    keep_records: bool,
) -> None:
    with store.session() as session:
        op = session.get(Operation, operation_id)
        if op is None:
            return
        op.state = state
        op.error = error
        op.message = message
        op.finished = None if state == RUNNING else utcnow()
        if not keep_records:
            # A recovered operation's records are spent; failed ones stay for a retry.
            session.execute(
                delete(OperationRecord).where(OperationRecord.operation_id == operation_id)
            )
