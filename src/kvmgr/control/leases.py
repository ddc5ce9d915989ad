"""Leases: who works on an object now, in the database every kvmgr process shares.

A lease is a row of ``leases`` keyed by the object ("vm:<host>/<uuid>").  It is taken in ONE
statement, an upsert that inserts the row or takes it over only when it has expired, so two
processes (two CLIs, a CLI and the API, two API replicas) can never both believe they hold it:
the database decides, not a read followed by a write.

While a lease is held, a daemon thread renews its expiry every ``ttl/3`` seconds; a holder that
dies stops renewing and its leases fall free at expiry.  The holder id is
``<hostname>:<pid>:<process start time>``, so a lease held by a process of THIS machine that no
longer exists (``kill -9``) is taken over at once, without waiting for the expiry.  The start
time makes a recycled pid count as another process.

Inside one process a lease is re-entrant for the thread that holds it (a clone takes a snapshot
of its source under the lease it already holds); another thread of the same process is refused
like any other process: the database row cannot tell them apart, so the process keeps a registry
of what it holds per database, shared by every :class:`Leases` on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import BindParameter, Table, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from kvmgr.control.models import Lease
from kvmgr.errors import Busy, OperationFailed, Unsupported
from kvmgr.store.db import Store
from kvmgr.store.models import aware, utcnow

log = logging.getLogger(__name__)

#: Seconds a lease lives without renewal.  Short, so a dead remote holder frees its objects
#: soon; the renewal thread refreshes it every third of that.
DEFAULT_TTL = 20.0
#: How often a waiting caller tries again.
POLL_SECONDS = 0.1


# ------------------------------------------------------------------ holder ids


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[19]  # field 22 of proc(5); the split starts at field 3


@cache
def _holder_for(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_proc_start(pid) or '0'}"


def holder_id() -> str:
    """This process's holder id (recomputed after a fork, since the pid changes)."""
    return _holder_for(os.getpid())


def holder_alive(holder: str) -> bool | None:
    """Whether ``holder`` still runs: known only for holders of this machine (None otherwise)."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return None
    return _proc_start(int(parts[1])) == parts[2]


def when(moment: datetime) -> str:
    return aware(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------ statements, built once

_LEASES: Table = Lease.__table__  # type: ignore[assignment]
_COLUMNS = ("key", "holder", "operation", "actor", "acquired", "expires")


@cache
def _statements(dialect: str) -> dict[str, Any]:
    """The statements of a lease's life with bound parameters (named ``b_<column>``): built
    and compiled once, since each lifecycle command pays for them (constructing them cost more
    than the SQL itself)."""
    c = _LEASES.c
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    base = insert(_LEASES).values({name: bindparam(f"b_{name}") for name in _COLUMNS})
    mine: BindParameter[str] = bindparam("b_holder")
    keys: BindParameter[list[str]] = bindparam("b_keys", expanding=True)
    return {
        # Taken over only when expired, or when the row is our own (left by a failed release:
        # no thread of ours holds it, or the registry would have re-entered).
        "upsert": base.on_conflict_do_update(
            index_elements=[c.key],
            set_={name: base.excluded[name] for name in _COLUMNS if name != "key"},
            where=(c.expires < bindparam("b_acquired")) | (c.holder == mine),
        ).returning(c.key),
        "take_over": update(_LEASES)
        .where(c.key == bindparam("b_key"), c.holder == bindparam("b_dead"))
        .values({name: bindparam(f"b_{name}") for name in _COLUMNS if name != "key"}),
        "read": select(_LEASES).where(c.key == bindparam("b_key")),
        "release": delete(_LEASES).where(c.key.in_(keys), c.holder == mine),
        "renew": update(_LEASES)
        .where(c.key.in_(keys), c.holder == mine)
        .values(expires=bindparam("b_expires"))
        .returning(c.key),
    }


def _params(**values: Any) -> dict[str, Any]:
    return {f"b_{name}": value for name, value in values.items()}


# ------------------------------------------------------------------ the registry of held leases


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a lease, for messages ("busy: snapshot create by cli:ann since ...")."""

    key: str
    holder: str
    operation: str
    actor: str
    acquired: datetime
    expires: datetime

    def describe(self) -> str:
        return f"{self.operation} by {self.actor} since {when(self.acquired)}"


@dataclass
class _Held:
    thread: int
    depth: int
    info: LeaseInfo
    ttl: float


@dataclass
class _Registry:
    """What this process holds in one database, shared by every :class:`Leases` on it: two
    planes in one process (the API's and a worker's) must refuse each other like processes do,
    which the rows cannot tell (same holder id)."""

    held: dict[str, _Held] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)
    renewer: threading.Thread | None = None


_REGISTRIES: dict[str, _Registry] = {}
_REGISTRIES_GUARD = threading.Lock()


def _registry(url: str) -> _Registry:
    with _REGISTRIES_GUARD:
        return _REGISTRIES.setdefault(url, _Registry())


def _forget_after_fork() -> None:
    # A forked child holds nothing: its pid, hence its holder id, is not the parent's.  (The
    # guard is taken around the fork, so no other thread held it at that moment.)
    _REGISTRIES.clear()
    _REGISTRIES_GUARD.release()


os.register_at_fork(
    before=_REGISTRIES_GUARD.acquire,
    after_in_parent=_REGISTRIES_GUARD.release,
    after_in_child=_forget_after_fork,
)


class Leases:
    """Take, renew and release leases in ``store`` (one per process and store: the registry of
    what this process holds lives here)."""

    def __init__(self, store: Store, ttl: float = DEFAULT_TTL) -> None:
        if store.engine.dialect.name not in ("sqlite", "postgresql"):
            raise Unsupported(
                f"leases need SQLite or PostgreSQL, not {store.engine.dialect.name}",
                hint="set KVMGR_DB_URL to a sqlite:// or postgresql+psycopg:// URL",
            )
        self.store = store
        self.ttl = ttl
        self._sql = _statements(store.engine.dialect.name)
        registry = _registry(store.url)
        self._registry = registry
        self._held = registry.held
        self._guard = registry.guard

    # -------------------------------------------------------------- public
    @contextlib.contextmanager
    def hold(
        self,
        key: str,
        operation: str,
        *,
        actor: str,
        what: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Iterator[None]:
        """Hold the lease ``key`` for the block, naming ``operation`` to whoever is refused.

        A held lease raises :class:`Busy` ("<what> is busy: <op> by <who> since <t>") at once,
        or, with ``wait``, once ``timeout`` seconds have passed (never without a timeout).
        """
        self.take(key, operation, actor=actor, what=what, wait=wait, timeout=timeout)
        try:
            yield
        finally:
            self.drop([key])

    def take(
        self,
        key: str,
        operation: str,
        *,
        actor: str,
        what: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Take ``key`` (or enter it again from the thread holding it); :meth:`drop` gives it
        back.  :meth:`hold` is the usual way; this pair lets an operation release every lease
        it holds in the transaction that marks it done."""
        if not self._reenter(key):
            self._acquire(key, operation, actor, what or key, wait=wait, timeout=timeout)

    def adopt(self, info: LeaseInfo) -> None:
        """Count as held a lease row the caller inserted in its own transaction (a fresh key,
        such as an operation's own, which nobody else can hold)."""
        with self._guard:
            self._held[info.key] = _Held(threading.get_ident(), 1, info, self.ttl)
        self._start_renewer()

    def drop(self, keys: list[str], session: Session | None = None) -> None:
        """Leave ``keys``; the rows of those left for the last time are deleted, in ``session``
        when given (so they go in the caller's transaction), else in one of their own."""
        gone = self.forget(keys)
        if not gone:
            return
        stmt = self._sql["release"]
        params = _params(keys=gone, holder=holder_id())
        if session is not None:
            session.execute(stmt, params)
            return
        try:
            with self.lax_transaction() as own:
                own.execute(stmt, params)
        except OperationFailed as err:
            # Not fatal: the rows expire by themselves once nobody renews them.
            log.warning("could not release leases %s: %s", gone, err)

    def clear_dead(self, holder: str) -> int:
        """Delete every lease row of ``holder`` when it is a process of this machine that is
        gone (rows a killed process left: free already, since a taker checks the holder, but
        they would linger as rows until expiry); the number deleted."""
        if holder == holder_id() or holder_alive(holder) is not False:
            return 0
        with self.lax_transaction() as session:
            result = session.execute(delete(_LEASES).where(_LEASES.c.holder == holder))
        return int(getattr(result, "rowcount", 0) or 0)

    def forget(self, keys: list[str]) -> list[str]:
        """Leave ``keys`` in this process's registry only; returns those left for the last
        time, whose rows the caller deletes (holder = this process) in its own statement."""
        gone: list[str] = []
        with self._guard:
            for key in keys:
                held = self._held[key]
                held.depth -= 1
                if not held.depth:
                    del self._held[key]
                    gone.append(key)
        return gone

    def insert(self, connection: Any, key: str, operation: str, actor: str) -> LeaseInfo:
        """Insert a fresh lease row held by this process in the caller's transaction; pass the
        result to :meth:`adopt` once committed."""
        now = utcnow()
        info = LeaseInfo(
            key, holder_id(), operation[:200], actor[:64], now, now + timedelta(seconds=self.ttl)
        )
        connection.execute(_LEASES.insert(), info.__dict__)
        return info

    def holds(self, key: str) -> bool:
        """Whether this thread holds ``key``."""
        with self._guard:
            held = self._held.get(key)
            return held is not None and held.thread == threading.get_ident()

    def current(self, key: str) -> LeaseInfo | None:
        """The live lease on ``key``, or None when it is free (absent, expired, holder dead)."""
        with self.store.session() as session:
            row = session.get(Lease, key)
            info = _info(row) if row is not None else None
        if info is None or self.free(info):
            return None
        return info

    def busy(self, key: str) -> str | None:
        """``"busy: <op> by <who> since <t>"`` while someone holds ``key``, else None."""
        info = self.current(key)
        return None if info is None else f"busy: {info.describe()}"

    # -------------------------------------------------------------- taking
    def _acquire(
        self,
        key: str,
        operation: str,
        actor: str,
        what: str,
        *,
        wait: bool,
        timeout: float | None,
    ) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self._try(key, operation, actor)
            if info is None:
                self._start_renewer()
                return
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                raise Busy(
                    f"{what} is busy: {info.describe()}",
                    hint="wait until that operation ends and try again",
                )
            time.sleep(POLL_SECONDS)

    def _try(self, key: str, operation: str, actor: str) -> LeaseInfo | None:
        """Take ``key`` if free (None); else who holds it."""
        me = holder_id()
        while True:
            with self._guard:
                held = self._held.get(key)
            if held is not None:
                return held.info  # another thread of this process
            taken = self._upsert(key, operation, actor, me)
            if taken is not None:
                break
            with self.lax_transaction() as session:
                row = session.execute(self._sql["read"], _params(key=key)).first()
                info = _info(row) if row is not None else None
            if info is None:
                continue  # released between our two statements: try again
            if info.holder == me or holder_alive(info.holder) is not False:
                return info
            # A dead process of this machine: take over at once, but only from that holder.
            taken = self._take_over(key, operation, actor, me, info.holder)
            if taken is None:
                continue
            log.info("lease %s taken over from dead holder %s", key, info.holder)
            break
        with self._guard:
            self._held[key] = _Held(threading.get_ident(), 1, taken, self.ttl)
        return None

    def _values(self, key: str, operation: str, actor: str, me: str) -> dict[str, Any]:
        now = utcnow()
        return {
            "key": key,
            "holder": me,
            "operation": operation[:200],
            "actor": actor[:64],
            "acquired": now,
            "expires": now + timedelta(seconds=self.ttl),
        }

    def _upsert(self, key: str, operation: str, actor: str, me: str) -> LeaseInfo | None:
        values = self._values(key, operation, actor, me)
        with self.lax_transaction() as session:
            taken = session.execute(self._sql["upsert"], _params(**values))
            if taken.first() is None:
                return None
        return LeaseInfo(**values)

    def _take_over(
        self, key: str, operation: str, actor: str, me: str, dead: str
    ) -> LeaseInfo | None:
        values = self._values(key, operation, actor, me)
        with self.lax_transaction() as session:
            changed = session.execute(self._sql["take_over"], _params(**values, dead=dead)).rowcount
        return LeaseInfo(**values) if changed else None

    def free(self, info: LeaseInfo) -> bool:
        """Whether the lease ``info`` has expired or its holder (of this machine) is dead."""
        if aware(info.expires) < utcnow():
            return True
        return info.holder != holder_id() and holder_alive(info.holder) is False

    # -------------------------------------------------------------- holding and leaving
    def _reenter(self, key: str) -> bool:
        with self._guard:
            held = self._held.get(key)
            if held is not None and held.thread == threading.get_ident():
                held.depth += 1
                return True
        return False

    def _start_renewer(self) -> None:
        registry = self._registry
        with self._guard:
            if registry.renewer is not None and registry.renewer.is_alive():
                return
            registry.renewer = threading.Thread(
                target=self._renew_loop, name="kvmgr-lease-renewal", daemon=True
            )
            registry.renewer.start()

    def _renew_loop(self) -> None:
        while True:
            with self._guard:
                ttls = {held.ttl for held in self._held.values()}
            time.sleep(min(ttls, default=self.ttl) / 3)
            with self._guard:
                by_ttl: dict[float, list[str]] = {}
                for key, held in self._held.items():
                    by_ttl.setdefault(held.ttl, []).append(key)
                if not by_ttl:
                    self._registry.renewer = None
                    return
            for ttl, keys in by_ttl.items():
                self.renew(keys, ttl)

    def renew(self, keys: list[str], ttl: float | None = None) -> None:
        """Push the expiry of ``keys`` (held by this process) one ttl ahead."""
        expires = utcnow() + timedelta(seconds=self.ttl if ttl is None else ttl)
        params = _params(keys=keys, holder=holder_id(), expires=expires)
        with self._guard:
            before = {key: self._held.get(key) for key in keys}
        try:
            with self.lax_transaction() as session:
                renewed = set(session.execute(self._sql["renew"], params).scalars())
        except OperationFailed as err:
            log.warning("could not renew leases %s: %s", keys, err)
            return
        with self._guard:
            # A key released (or released and taken again) meanwhile is not lost.
            lost = [
                key
                for key in keys
                if key not in renewed
                and before[key] is not None
                and self._held.get(key) is before[key]
            ]
        if lost:
            log.error("lost the leases %s: they expired before renewal", lost)

    @contextlib.contextmanager
    def lax_transaction(self) -> Iterator[Any]:
        """A transaction whose commit need not survive a power cut, so it costs no fsync.

        A lease is only worth something while its holder lives: if the machine loses power,
        every holder on it dies with it, and a lost release leaves a row whose holder (pid and
        start time of a process of the previous boot) counts as dead.  The journal and the
        operations' rows stay durable (they go through :meth:`Store.session`), and SQLite's
        next durable commit writes these out with it.  On PostgreSQL the commit is
        asynchronous (``synchronous_commit off``), on SQLite the WAL is not synced
        (``synchronous NORMAL``, safe against corruption) for this one transaction.

        On PostgreSQL the block's statements each commit on their own (autocommit, on
        :attr:`Store.lax_engine`, whose connections start with ``synchronous_commit off``): one
        round trip per statement instead of BEGIN, SET, statement, COMMIT.  Every lease change
        is one statement; where a block has two (an operation's row and its own lease; a use's
        sweep of dead rows) either may stand alone after a crash without harm.
        """
        if self.store.engine.dialect.name == "postgresql":
            try:
                with self.store.lax_engine.connect() as connection:
                    yield connection
            except SQLAlchemyError as err:
                raise _database_error(err) from err
            return
        try:
            with self.store.engine.connect() as connection:
                sqlite = connection.dialect.name == "sqlite"
                if sqlite:
                    # Only outside a transaction; pysqlite begins one before DML, not here.
                    level = connection.exec_driver_sql("PRAGMA synchronous").scalar()
                    connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
                    connection.commit()
                try:
                    with connection.begin():
                        if not sqlite:
                            connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                        yield connection
                finally:
                    if sqlite:
                        connection.exec_driver_sql(f"PRAGMA synchronous={int(level or 2)}")
                        connection.commit()
        except SQLAlchemyError as err:
            raise _database_error(err) from err


def _database_error(err: SQLAlchemyError) -> OperationFailed:
    return OperationFailed(
        f"lease database error: {err.__class__.__name__}: {err}",
        hint="check KVMGR_DB_URL and that the database server is running",
    )


def _info(row: Lease) -> LeaseInfo:
    return LeaseInfo(row.key, row.holder, row.operation, row.actor, row.acquired, row.expires)
