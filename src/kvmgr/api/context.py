"""What the API process holds for its lifetime: settings, the store, the control plane, the libvirt
connection, the worker that runs queued tasks (unless ``--no-worker``), the event bus fed from
the database, console tokens and the login limiter; plus :meth:`AppContext.act`, the one door
every mutating request goes through (permission on the object, the VM's lease, the work, the
audit row), and :meth:`AppContext.submit`, the door of long operations (a task in the queue).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

import libvirt

from kvmgr.api.events import DatabaseEvents, EventBus, StatsPublisher
from kvmgr.api.security import ConsoleTokens, LoginLimiter
from kvmgr.api.settings import Settings
from kvmgr.api.stats_history import HistoryLimits, StatsHistory
from kvmgr.connect import Connection, open_connection
from kvmgr.control import tasks
from kvmgr.control.authz import Authz, state_dirs
from kvmgr.control.plane import ControlPlane, Key, vm_name_key
from kvmgr.control.worker import Worker, registered_hosts
from kvmgr.errors import Forbidden, KvmgrError
from kvmgr.services import vms
from kvmgr.services.steps import Steps
from kvmgr.store import audit
from kvmgr.store.db import Store
from kvmgr.store.users import Principal

if TYPE_CHECKING:
    from kvmgr.control.hosts import HostRegistry

log = logging.getLogger(__name__)

#: The registered host a request names (``?host=NAME`` on any route), else None: the server's
#: own.  Set by kvmgr.api.deps.request_host; tasks and thread-pool calls inherit it.
REQUEST_HOST: ContextVar[str | None] = ContextVar("kvmgr_request_host", default=None)
T = TypeVar("T")


class Unauthorized(KvmgrError):
    """No valid session cookie or API token came with the request."""

    http_status = 401


class TooManyAttempts(KvmgrError):
    """Login rate limit reached."""

    http_status = 429


class AppContext:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.database_url)
        #: Acts as "api"; each request acts as its user (:meth:`plane_for`).
        self.plane = ControlPlane(self.store, "api", lambda _host: self.conn())
        self.bus = EventBus()
        self.feed = DatabaseEvents(self.store, self.bus)
        self.worker: Worker | None = None
        self.console_tokens = ConsoleTokens(settings.console_token_seconds, settings.secret_key)
        self.limiter = LoginLimiter(
            settings.login_attempts, settings.login_window, settings.login_address_attempts
        )
        self._conn: Connection | None = None
        self._host_name: str | None = None
        self._conn_lock = threading.Lock()
        #: The last hour of samples of the hosts this replica samples (each replica its own).
        self.history = StatsHistory(HistoryLimits(interval=settings.stats_interval or 1.0))
        self.stats = StatsPublisher(
            self.conn, self.bus, settings.stats_interval, self.history, self.own_host
        )

    # ---------------------------------------------------------------- lifetime
    def start(self) -> None:
        for outcome in self.plane.recover():
            log.warning("recovered: %s", outcome.line())
        tasks.load_kinds()
        self.feed.start()
        if self.settings.worker:
            if self.settings.events:
                self.own_host()  # registered, so that some worker watches its events
            self.worker = Worker(
                self.store,
                self.host_conn,
                concurrency=self.settings.worker_threads,
                state_dir=self.settings.state_dir,
                # Lifecycle events of every registered host, each watched by one worker of the
                # fleet; they reach this replica's stream through the events table (self.feed).
                host_events=registered_hosts(self.store) if self.settings.events else None,
            )
            self.worker.start()
        if self.settings.stats_interval > 0:
            self.stats.start()

    def stop(self) -> None:
        self.stats.stop()
        if self.worker is not None:
            self.worker.stop(grace=self.settings.worker_grace)
            self.worker = None
        self.feed.stop()
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        from kvmgr.control.hosts import close_connections

        close_connections()
        self.store.dispose()

    @property
    def events_live(self) -> bool:
        """This replica streams the events table (host events come from whichever worker
        watches each host, here or elsewhere)."""
        return self.feed.running

    # ---------------------------------------------------------------- libvirt
    @property
    def hosts(self) -> HostRegistry:
        from kvmgr.control.hosts import HostRegistry

        return HostRegistry(self.store)

    def conn(self) -> Connection:
        """The connection to the request's host (``?host=``), else the server's own: shared
        (libvirt's calls are thread-safe), reopened if it died."""
        named = REQUEST_HOST.get()
        if named is not None and named != self.own_host():
            return self.hosts.connect(named)  # bounded, keepalive, kept for the process
        with self._conn_lock:
            if self._conn is not None and not _alive(self._conn):
                self._conn.close()
                self._conn = None
            if self._conn is None:
                self._conn = open_connection(self.settings.uri)
            return self._conn

    def host_conn(self, host: str) -> Connection:
        """The connection of ``host`` for tasks: this server's own host shares :meth:`conn`,
        others come from the host registry."""
        if host == self.own_host():
            token = REQUEST_HOST.set(None)  # a worker thread has no request: the server's own
            try:
                return self.conn()
            finally:
                REQUEST_HOST.reset(token)
        return self.hosts.connect(host)

    # ---------------------------------------------------------------- tasks
    def submit(
        self,
        who: Principal,
        kind: str,
        params: dict[str, Any],
        target: str,
        secrets: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Queue a task for any worker; the audit row of its outcome is the worker's.
        ``secrets`` wait for its handler in kvmgr.control.task_secrets, not in ``params``."""
        task = tasks.submit(
            self.store,
            kind,
            params,
            owner=who,
            target=target,
            host=self.host_name(),
            secrets=secrets,
        )
        if self.worker is not None:
            self.worker.wake()
        return task

    # ---------------------------------------------------------------- control plane
    def host_name(self) -> str:
        """The registered host a request acts on: the one it names (``?host=``), else the one
        with the server's URI (registered on first use, as the CLI's ``-c`` is; see
        kvmgr.control.hosts)."""
        named = REQUEST_HOST.get()
        if named is not None:
            return named
        return self.own_host()

    def own_host(self) -> str:
        """The registered name of the server's own libvirt URI."""
        if self._host_name is None:
            from kvmgr.connect import default_uri
            from kvmgr.control.hosts import HostRegistry

            uri = self.settings.uri or default_uri()
            self._host_name = HostRegistry(self.store).ensure_uri(uri).name
        return self._host_name

    def plane_for(self, who: Principal | str) -> ControlPlane:
        return self.plane.for_actor(who if isinstance(who, str) else who.name)

    @contextmanager
    def vm_lease(self, who: Principal | str, name: str, operation: str) -> Iterator[None]:
        """Hold VM ``name``'s lease: refused (409 Busy) while any kvmgr process works on it."""
        plane = self.plane_for(who)
        with plane.lease(plane.vm_key(self.host_name(), name), operation):
            yield

    @contextmanager
    def operation(
        self,
        who: Principal | str,
        kind: str,
        target: str,
        keys: list[Key],
        say: Callable[[str], None] | None = None,
        *,
        sole: bool = False,
    ) -> Iterator[Steps]:
        """A journaled operation on this host under ``keys``: what a killed server leaves is
        undone or finished by the next process (see kvmgr.control.plane); ``sole`` for a
        delete (refused while an operation uses the object)."""
        plane = self.plane_for(who)
        with plane.operation(kind, target, self.host_name(), keys, say=say, sole=sole) as steps:
            yield steps

    def vm_key(self, name: str) -> Key:
        return self.plane.vm_key(self.host_name(), name)

    def vm_name_key(self, name: str) -> Key:
        return vm_name_key(self.host_name(), name)

    def busy(self, name: str) -> str | None:
        """ "busy: <op> by <who> since <t>" while VM ``name`` is leased, else None."""
        return self.plane.busy(self.plane.vm_key(self.host_name(), name))

    # ---------------------------------------------------------------- permissions and audit
    def vm_uuid(self, conn: Connection, name: str) -> str:
        dom = vms.lookup(conn, name)
        return str(dom.UUIDString())

    def authz(self, conn: Connection, who: Principal) -> Authz:
        """The input checks (kvmgr.control.authz) for ``who`` on this connection."""
        return Authz(
            conn,
            who,
            self.store,
            host=self.host_name(),
            state_dirs=state_dirs(self.settings.state_dir),
        )

    def check_vm(self, conn: Connection, who: Principal, name: str) -> None:
        """Refuse unless ``who`` may act on VM ``name`` (admin, or its owner or owner's group)."""
        self.authz(conn, who).vm(name)

    def audit(
        self, who: Principal | str, action: str, target: str, result: str, detail: str = ""
    ) -> None:
        name = who if isinstance(who, str) else who.name
        with self.store.session() as session:
            audit.record(
                session, user=name, action=action, target=target, result=result, detail=detail
            )

    def audited(self, who: Principal, action: str, target: str, work: Callable[[], T]) -> T:
        """Run ``work`` and write the audit row saying how it ended.  Blocking."""
        try:
            result = work()
        except KvmgrError as err:
            outcome = "denied" if isinstance(err, Forbidden) else "error"
            self.audit(who, action, target, outcome, str(err))
            raise
        self.audit(who, action, target, "ok")
        return result

    def act(
        self,
        who: Principal,
        action: str,
        target: str,
        work: Callable[[Connection], T],
        *,
        vm: str | None = None,
        lease: bool = True,
    ) -> T:
        """Check ``who`` may act on ``vm`` (when given), run ``work`` on the libvirt connection
        under the VM's lease (unless ``lease`` is False: reads such as console tokens), write the
        audit row.  Blocking: call it from a sync route (FastAPI runs those in its thread pool)
        or through ``run_in_threadpool``.
        """

        def on_libvirt() -> T:
            conn = self.conn()
            if vm is None:
                return work(conn)
            self.check_vm(conn, who, vm)
            if not lease:
                return work(conn)
            with self.vm_lease(who, vm, action):
                return work(conn)

        return self.audited(who, action, target, on_libvirt)


def _alive(conn: Connection) -> bool:
    try:
        return bool(conn.virconn.isAlive())
    except libvirt.libvirtError:
        return False
