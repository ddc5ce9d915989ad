"""The control plane facade: leases, journaled operations and recovery over one store.

Faces use it like this::

    plane = ControlPlane(store, actor="cli:ann", connect=lambda host: conn)
    with plane.lease(plane.vm_key("local", "web1"), "start"):
        vms.start(conn, "web1")
    with plane.operation("create", "web1", "local", keys=[...]) as steps:
        create.create_vm(conn, spec, steps=steps)

:meth:`ControlPlane.operation` takes the leases, writes the operation's row, yields a
journal-backed :class:`~kvmgr.services.steps.Steps`; when the block raises it undoes (or
finishes) in-process what the journal says, and when it returns marks the operation done.  A
process killed inside leaves the row ``running`` for :meth:`ControlPlane.recover`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Connection as DBConnection
from sqlalchemy import Table, bindparam, delete, select, text, update
from sqlalchemy.orm import Session

from kvmgr.connect import Connection
from kvmgr.control import recovery
from kvmgr.control.journal import JournalSteps
from kvmgr.control.keys import Key
from kvmgr.control.leases import DEFAULT_TTL, Leases, holder_id
from kvmgr.control.models import (
    DONE,
    FAILED,
    RECOVERED,
    RECOVERY_FAILED,
    RUNNING,
    Operation,
    OperationRecord,
)
from kvmgr.control.uses import Uses
from kvmgr.errors import libvirt_errors
from kvmgr.services.steps import Steps, operation_ended, run_recovery, with_crash_hook
from kvmgr.store.clip import clip
from kvmgr.store.db import Store
from kvmgr.store.models import aware, utcnow

log = logging.getLogger(__name__)
#: How long an operation waits for a delete of an object it uses to end (it then finds the
#: object gone, a clearer refusal than "busy").
USE_WAIT = 5.0
_OPERATIONS: Table = Operation.__table__  # type: ignore[assignment]


def vm_key(host: str, uuid: str, name: str | None = None) -> Key:
    """The lease key of a VM: by UUID, so a rename cannot dodge it; by host, since UUIDs of
    two hosts' VMs may collide."""
    return Key(f"vm:{host}/{uuid}", f"VM {name or uuid}")


def vm_name_key(host: str, name: str) -> Key:
    """The lease of a VM name on ``host``: two creates (or clones) of one name serialise."""
    return Key(f"vm-name:{host}/{name}", f"VM name {name}")


@dataclass(frozen=True)
class OperationView:
    """One operation as ``kvmgr ops list`` and the API show it."""

    id: str
    kind: str
    target: str
    host: str
    actor: str
    state: str
    created: datetime
    finished: datetime | None
    message: str
    error: str | None


@dataclass
class ControlPlane:
    """Leases, journal and recovery for ``actor`` over ``store``; ``connect(host)`` gives the
    libvirt connection of a host (kept open by the caller)."""

    store: Store
    actor: str
    connect: Callable[[str], Connection]
    leases: Leases

    def __init__(
        self,
        store: Store,
        actor: str,
        connect: Callable[[str], Connection],
        *,
        ttl: float = DEFAULT_TTL,
        leases: Leases | None = None,
    ) -> None:
        self.store = store
        self.actor = actor
        self.connect = connect
        self.leases = leases or Leases(store, ttl)
        self.uses = Uses(self.leases)

    def for_actor(self, actor: str) -> ControlPlane:
        """The same plane (same leases held, same store) acting for another user."""
        return replace(self, actor=actor)

    # -------------------------------------------------------------- keys
    def vm_key(self, host: str, name: str) -> Key:
        """The lease key of VM ``name`` on ``host`` (looked up for its UUID)."""
        from kvmgr.services.vms import lookup

        dom = lookup(self.connect(host), name)
        with libvirt_errors(f"reading the UUID of VM {name}"):
            return vm_key(host, dom.UUIDString(), name)

    # -------------------------------------------------------------- leases
    @contextlib.contextmanager
    def lease(
        self,
        key: Key | str,
        operation: str,
        *,
        wait: bool = False,
        timeout: float | None = None,
        sole: bool = False,
    ) -> Iterator[None]:
        """Hold one lease for the block (lifecycle actions: start, stop, reboot, ...); ``sole``
        (what removes the object) also waits out, or is refused by, every use of it."""
        name, what = _split(key)
        with self.leases.hold(
            name, operation, actor=self.actor, what=what, wait=wait, timeout=timeout
        ):
            marker = (
                self.uses.claim_sole(
                    name, operation, actor=self.actor, what=what, wait=wait, timeout=timeout
                )
                if sole
                else None
            )
            try:
                yield
            finally:
                if marker is not None:
                    self.leases.drop([marker])

    @contextlib.contextmanager
    def using(self, keys: Iterable[Key], operation: str) -> Iterator[None]:
        """Use ``keys`` for the block (a NIC plugged into a network): their deletes wait."""
        held: list[str] = []
        try:
            for key in keys:
                held.append(self._take_use(key, operation))
            yield
        finally:
            if held:
                self.leases.drop(held)

    def _take_use(self, key: Key, operation: str) -> str:
        """A use of ``key`` (its row's key), waiting up to USE_WAIT for a delete to end."""
        return self.uses.take(
            key.key, operation, actor=self.actor, what=key.what, wait=True, timeout=USE_WAIT
        )

    def busy(self, key: Key | str) -> str | None:
        """``"<op> by <who> since <t>"`` while someone holds ``key`` (``vm info`` shows it as
        ``busy: ...``), else None."""
        info = self.leases.current(_split(key)[0])
        return None if info is None else info.describe()

    # -------------------------------------------------------------- operations
    @contextlib.contextmanager
    def operation(
        self,
        kind: str,
        target: str,
        host: str,
        keys: Iterable[Key | str] = (),
        *,
        wait: bool = False,
        timeout: float | None = None,
        say: Callable[[str], None] | None = None,
        sole: bool = False,
    ) -> Iterator[Steps]:
        """Run a journaled operation under the leases of ``keys``; yields its :class:`Steps`.

        ``sole`` (a delete): every use of the keys' objects is waited out or refuses it.  The
        operation's :meth:`Steps.uses` takes uses of what it builds on until it ends.
        """
        op_id = str(uuid.uuid4())
        description = f"{kind} {target}"
        split = sorted({_split(key) for key in keys})  # one order everywhere: no dead-lock
        held: list[str] = []
        used: set[str] = set()

        def use(kind: str, names: tuple[str, ...]) -> None:
            from kvmgr.control.objects import use_key

            key = use_key(host, kind, names)
            if key.key in used or self.leases.holds(key.key):
                return  # used already, or this operation works on the object itself
            held.append(self._take_use(key, description))
            used.add(key.key)

        # Each commit costs an fsync (~10 ms on a plain disk): the operation's row and its own
        # lease go in one transaction, and the end, the records and every lease in another.
        try:
            for name, what in split:
                self.leases.take(
                    name, description, actor=self.actor, what=what, wait=wait, timeout=timeout
                )
                held.append(name)
                if sole:
                    held.append(
                        self.uses.claim_sole(
                            name,
                            description,
                            actor=self.actor,
                            what=what,
                            wait=wait,
                            timeout=timeout,
                        )
                    )
            # Not synced: the first journal record's commit writes it out with it, and an
            # operation lost with no record left nothing to undo.
            with self.leases.lax_transaction() as connection:
                connection.execute(
                    _OPERATIONS.insert(),
                    {
                        "id": op_id,
                        "kind": clip(Operation, "kind", kind),
                        "target": clip(Operation, "target", target),
                        "host": clip(Operation, "host", host),
                        "actor": clip(Operation, "actor", self.actor),
                        "holder": holder_id(),
                        "keys": [name for name, _what in split],
                        "state": RUNNING,
                    },
                )
                info = self.leases.insert(
                    connection, recovery.op_key(op_id), description, self.actor
                )
            self.leases.adopt(info)
            held.append(info.key)
            steps = JournalSteps(self.store, op_id, say, quick=self.leases.lax_transaction, use=use)
            hooked = with_crash_hook(steps)  # the kill -9 tests' hook; steps itself otherwise
            try:
                yield hooked
            except BaseException as err:
                self._failed(op_id, host, steps, err)
                raise
            operation_ended(hooked)
            # Durable once records exist: a lost "done" would have recovery undo finished work.
            journaled = bool(steps.undo or steps.finish)
            if journaled and self.store.engine.dialect.name == "postgresql":
                gone, held = self.leases.forget(held), []
                self._end_postgres(op_id, steps.message, gone)
                return
            end = self.store.session() if journaled else self.leases.lax_transaction()
            with end as session:
                self._end_in(session, op_id, DONE, None, steps.message, drop_records=journaled)
                self.leases.drop(held, session)
                held = []
        finally:
            if held:
                self.leases.drop(held)

    def _end_postgres(self, op_id: str, message: str, released: list[str]) -> None:
        """Mark the operation done, drop its records and release its leases in ONE statement
        (data-modifying CTEs: atomic like a transaction, one round trip instead of five),
        committed synchronously."""
        with self.store.single() as connection:
            connection.execute(
                _END_POSTGRES,
                {
                    "id": op_id,
                    "message": message,
                    "finished": utcnow(),
                    "keys": released,
                    "holder": holder_id(),
                },
            )

    def _failed(self, op_id: str, host: str, steps: JournalSteps, err: BaseException) -> None:
        """Undo (or finish) in-process what the journal of a failed operation says."""
        error = f"{err.__class__.__name__}: {err}"
        try:
            conn = self.connect(host)
            problems = run_recovery(conn, steps.undo, steps.finish)
            if steps.finish and not problems:  # a delete finished here, past its face's forget
                from kvmgr.control.recovery_owners import forget_removed

                forget_removed(self.store, conn, host, steps.finish)
        except Exception as undo_err:  # recovery by a later process takes over
            log.error("in-process undo of %s failed (%s); left for recovery", op_id, undo_err)
            # Not ours any more, so any process's recovery (ours included) picks it up.
            with self.store.session() as session:
                session.execute(
                    update(Operation)
                    .where(Operation.id == op_id)
                    .values(holder="abandoned", error=error)
                )
            return
        state, message, trouble = recovery.outcome_of(steps.undo, steps.finish, problems)
        if state != RECOVERY_FAILED:
            state = FAILED if not steps.finish else RECOVERED
        self._end(
            op_id,
            state,
            error if trouble is None else f"{error}; {trouble}",
            message,
            drop_records=trouble is None,
        )

    def _end(
        self, op_id: str, state: str, error: str | None, message: str, *, drop_records: bool
    ) -> None:
        with self.store.session() as session:
            self._end_in(session, op_id, state, error, message, drop_records=drop_records)

    @staticmethod
    def _end_in(
        session: Session | DBConnection,
        op_id: str,
        state: str,
        error: str | None,
        message: str,
        *,
        drop_records: bool,
    ) -> None:
        session.execute(
            update(Operation)
            .where(Operation.id == op_id)
            .values(state=state, error=error, message=message, finished=utcnow())
        )
        if drop_records:
            session.execute(delete(OperationRecord).where(OperationRecord.operation_id == op_id))

    # -------------------------------------------------------------- recovery and listing
    def recover(self, *, retry_failed: bool = False) -> list[recovery.Outcome]:
        """Finish or undo the operations of dead holders (one query when there are none)."""
        return recovery.recover(
            self.store, self.leases, self.connect, actor=self.actor, retry_failed=retry_failed
        )

    def operations(self, *, include_done: bool = False, limit: int = 200) -> list[OperationView]:
        """Operations newest first; without ``include_done``, those not simply done."""
        query = select(Operation).order_by(Operation.created.desc()).limit(limit)
        if not include_done:
            query = query.where(Operation.state != DONE)
        with self.store.session() as session:
            return [
                OperationView(
                    op.id,
                    op.kind,
                    op.target,
                    op.host,
                    op.actor,
                    op.state,
                    aware(op.created),
                    aware(op.finished) if op.finished else None,
                    op.message,
                    op.error,
                )
                for op in session.scalars(query)
            ]


#: The end of a journaled operation on PostgreSQL (see ControlPlane._end_postgres).
_END_POSTGRES = text(
    "WITH records AS (DELETE FROM operation_records WHERE operation_id = :id),"
    " released AS (DELETE FROM leases WHERE key = ANY(:keys) AND holder = :holder)"
    " UPDATE operations SET state = 'done', error = NULL, message = :message,"
    " finished = :finished WHERE id = :id"
).bindparams(bindparam("finished", type_=_OPERATIONS.c.finished.type))


def _split(key: Key | str) -> tuple[str, str]:
    return (key.key, key.what) if isinstance(key, Key) else (key, key)


__all__ = ["ControlPlane", "Key", "OperationView", "vm_key", "vm_name_key"]
