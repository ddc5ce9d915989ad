"""The database: one engine per process, a short session per unit of work."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from kvmgr.errors import InvalidInput, OperationFailed
from kvmgr.store.migrate import upgrade

log = logging.getLogger(__name__)
#: A pooled PostgreSQL connection idle longer than this is pinged before use (see _ping_idle).
IDLE_PING_SECONDS = 10.0


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_conn.cursor()
    # Foreign keys for ON DELETE CASCADE; WAL so readers (the UI) never wait for the task writer.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Store:
    """Engine plus session factory for ``url``; the schema is migrated to the newest on open."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = _engine(url)
            upgrade(self.engine)
        except SQLAlchemyError as err:
            raise OperationFailed(
                f"cannot open the database {_redacted(url)}: {err.__class__.__name__}",
                hint="check KVMGR_DB_URL and that the database server is running",
            ) from err
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._lax: Engine | None = None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed at the end of the block, rolled back when the block raises."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def single(self) -> Iterator[Connection]:
        """For ONE statement that must be durable (a journal record): on PostgreSQL it runs in
        autocommit, one round trip instead of BEGIN, statement, COMMIT (the statement is its
        own transaction, synchronously committed like any); elsewhere a plain transaction."""
        with self.engine.connect() as connection:
            if self.engine.dialect.name != "postgresql":
                with connection.begin():
                    yield connection
                return
            yield connection.execution_options(isolation_level="AUTOCOMMIT")

    @property
    def lax_engine(self) -> Engine:
        """PostgreSQL only: an engine whose connections are in autocommit with
        ``synchronous_commit off`` from their start, for the lease rows (see
        kvmgr.control.leases.Leases.lax_transaction for why they need not survive a power
        cut): a lease statement is then one round trip, with no BEGIN, SET, COMMIT around it."""
        if self._lax is None:
            self._lax = create_engine(
                self.url,
                isolation_level="AUTOCOMMIT",
                connect_args={"options": "-c synchronous_commit=off"},
            )
            _ping_when_idle(self._lax)
        return self._lax

    def dispose(self) -> None:
        self.engine.dispose()
        if self._lax is not None:
            self._lax.dispose()


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        if not memory:
            _private_sqlite_file(Path(url.split("///", 1)[-1]))
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False},
            # One shared connection for an in-memory database, or every session sees a new one.
            poolclass=StaticPool if memory else None,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if "://" not in url:
        raise InvalidInput(
            f"database URL {url!r} is not a URL",
            hint="use sqlite:////var/lib/kvmgr/db/kvmgr.db or postgresql+psycopg://user@host/db",
        )
    engine = create_engine(url)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection before use only when it sat idle for IDLE_PING_SECONDS.

    ``pool_pre_ping`` costs a round trip on every checkout, that is on every transaction (a
    third of a lease's round trips); a connection used a moment ago is as good as the server
    that answered it then.  One idle longer (the server may have restarted, a firewall may have
    dropped it) is pinged, and a dead one is replaced before the caller sees it: SQLAlchemy's
    pessimistic disconnect handling, with the ping skipped on a hot connection.
    """

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_idle(dbapi: DBAPIConnection, record: ConnectionPoolEntry, _proxy: object) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return  # fresh from connect, or used a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi)
        except Exception as err:  # the driver's own error for a dropped connection
            raise DisconnectionError(str(err)) from err
        if not alive:
            raise DisconnectionError("the database connection did not answer")


def _private_sqlite_file(path: Path) -> None:
    """Make the SQLite file 0600 before SQLite opens it, in a 0700 directory when we make one.

    The file holds password hashes, session and API token hashes and the audit log: nobody but
    kvmgr's user reads it.  SQLite gives its -wal and -shm files the database file's mode.  A
    directory that already exists is left as it is (it may be shared); the file is kvmgr's own,
    so a too-open one is tightened.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
        path.parent.chmod(0o700)  # mkdir's mode is filtered by the umask
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise OperationFailed(
            f"cannot create the database file {path}: {err.strerror}",
            hint="check KVMGR_STATE_DIR / KVMGR_DB_URL and the directory's permissions",
        ) from err
    try:
        if os.fstat(fd).st_mode & 0o077:
            log.warning("database file %s was readable by others; setting mode 0600", path)
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        creds, _at, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url
