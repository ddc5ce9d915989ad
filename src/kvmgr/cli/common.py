"""What every command group shares: the host from ``--host`` or ``--connect``, its connection,
the control plane, and error reporting."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import typer

from kvmgr.cli.output import err_console

__all__ = [
    "CLIState",
    "conn",
    "err_console",
    "journaled",
    "name_lease",
    "progress",
    "report_errors",
    "state",
    "vm_lease",
]
from kvmgr.connect import Connection, open_connection
from kvmgr.connect.uri import URI_ENV
from kvmgr.errors import InvalidInput, at_the_boundary

if TYPE_CHECKING:  # SQLAlchemy costs ~0.4 s to import: only commands that use the store pay
    from kvmgr.control.hosts import HostRegistry
    from kvmgr.store.db import Store

if TYPE_CHECKING:
    from kvmgr.control.authz import Authz
    from kvmgr.control.plane import ControlPlane
    from kvmgr.services.steps import Steps

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class CLIState:
    """Set by the root callback from the global options."""

    uri: str | None = None
    #: ``--host NAME`` (anywhere on the command line, see kvmgr.cli.main.run).
    host: str | None = None
    _conn: Connection | None = field(default=None, repr=False)
    _plane: ControlPlane | None = field(default=None, repr=False)
    _store: Store | None = field(default=None, repr=False)
    _registry: HostRegistry | None = field(default=None, repr=False)
    _host_name: str | None = field(default=None, repr=False)
    _direct: bool = field(default=False, repr=False)  # _conn opened by -c, not the registry

    def connection(self) -> Connection:
        """Open the connection on first use, so commands that need none start fast.

        ``-c URI`` (or ``$KVMGR_URI``) opens that daemon directly, without the database, as it
        always did; otherwise the host comes from the registry (``--host``, else the default)
        and opens within the host time bound, with keepalive.
        """
        if self._conn is None:
            if self.uri is not None and self.host is None:
                self._conn = open_connection(self.uri)
                self._direct = True
                return self._conn
            from kvmgr.connect import default_uri
            from kvmgr.connect.bounded import connect_uri
            from kvmgr.control.host_lookup import quick_uri

            # the common case without SQLAlchemy (~1 s of CPU); the registry when unsure
            uri = quick_uri(self.host, default_uri())
            if uri is not None:
                self._conn = connect_uri(uri)
            else:
                self._conn = self.hosts().connect(self.host_name())
        return self._conn

    def store(self) -> Store:
        """The database (``KVMGR_DB_URL``, else SQLite in the state dir), opened on first use."""
        from kvmgr.statedir import url_from_environment

        url = url_from_environment()  # Settings().database_url without importing pydantic
        if self._store is not None and self._store.url != url:
            self._close_store()  # in-process callers (tests) may point elsewhere in between
        if self._store is None:
            from kvmgr.store.db import Store

            self._store = Store(url)
        return self._store

    def _close_store(self) -> None:
        """Drop the store and everything built on it (plane, registry, host connections)."""
        self._plane = None
        self._host_name = None
        self._registry = None
        if not self._direct:
            self._conn = None  # it was one of the cached host connections, closed below
        from kvmgr.connect.bounded import close_connections

        close_connections()
        if self._store is not None:
            self._store.dispose()
            self._store = None

    def hosts(self) -> HostRegistry:
        """The host registry over :meth:`store`."""
        if self._registry is None:
            from kvmgr.control.hosts import HostRegistry

            self._registry = HostRegistry(self.store())
        return self._registry

    def host_name(self) -> str:
        """The registered name of the host this command acts on.

        ``--host NAME`` must be registered (it wins over ``$KVMGR_URI``, not over an explicit
        ``-c`` naming another daemon); ``-c URI`` is the host registered with that URI, or is
        registered on first use under a name derived from it; otherwise the default host (see
        :meth:`kvmgr.control.hosts.HostRegistry.default`).
        """
        if self._host_name is None:
            if self.host is not None:
                record = self.hosts().get(self.host)
                explicit = self.uri is not None and self.uri != os.environ.get(URI_ENV)
                if explicit and self.uri != record.uri:
                    raise InvalidInput(
                        f"--host {self.host} and --connect {self.uri} name different daemons",
                        hint="give one of them",
                    )
                self._host_name = record.name
            elif self.uri is not None:
                self._host_name = self.hosts().ensure_uri(self.uri).name
            else:
                self._host_name = self.hosts().default().name
        return self._host_name

    def use_host(self, name: str) -> None:
        """Act on registered host ``name`` from now on (placement chose it: ``--host auto``)."""
        self.host = name
        self._host_name = None
        if not self._direct:
            self._conn = None

    def host_connection(self, host: str) -> Connection:
        """The connection to registered host ``host`` (this command's own when it is that one)."""
        try:
            mine = self.host_name()
        except InvalidInput:
            # Several hosts, no default, no --host: this command acts on no host of its own (ops
            # recover), but recovery still reaches each operation's host by its name.
            mine = None
        if host == mine:
            return self.connection()
        return self.hosts().connect(host)

    def plane(self, *, recover: bool = True) -> ControlPlane:
        """The control plane over the store of ``KVMGR_DB_URL``, opened on first use.

        Opening it recovers what dead kvmgr processes left (one query when nothing is pending)
        and says on stderr what it did (not with ``recover=False``: ``kvmgr ops recover``).
        """
        store = self.store()  # a new database (in-process tests) drops the old plane too
        if self._plane is None:
            import pwd

            from kvmgr.control.plane import ControlPlane

            user = pwd.getpwuid(os.geteuid()).pw_name
            self._plane = ControlPlane(store, f"cli:{user}", self.host_connection)
            for outcome in self._plane.recover() if recover else []:
                err_console.print(f"[yellow]recovered:[/] {outcome.line()}", highlight=False)
        return self._plane

    def close(self) -> None:
        if self._conn is not None and self._direct:
            self._conn.close()  # a registry's connections are closed with the registry
        self._conn = None
        self._close_store()
        self._direct = False


state = CLIState()


def conn() -> Connection:
    """The libvirt connection for this command."""
    return state.connection()


@contextmanager
def vm_lease(name: str, operation: str) -> Iterator[None]:
    """Hold the lease of VM ``name`` for ``operation`` (refused with Busy while another kvmgr
    process, here or elsewhere, works on the VM)."""
    plane = state.plane()
    with plane.lease(plane.vm_key(state.host_name(), name), operation):
        yield


@contextmanager
def journaled(
    kind: str,
    target: str,
    *,
    vms: tuple[str, ...] = (),
    new_names: tuple[str, ...] = (),
    say: Callable[[str], None] | None = None,
) -> Iterator[Steps]:
    """Run a multi-step operation in the control plane's journal, under the leases of the VMs
    it works on (``vms``) and of the VM names it makes (``new_names``); yields its Steps.

    A failure is undone (or finished) at once; a process killed inside leaves the journal for
    the next kvmgr process to recover.
    """
    from kvmgr.control.plane import vm_name_key

    plane = state.plane()
    host = state.host_name()
    keys = [plane.vm_key(host, name) for name in vms]
    keys += [vm_name_key(host, name) for name in new_names]
    with plane.operation(kind, target, host, keys=keys, say=say) as steps:
        yield steps


@contextmanager
def name_lease(name: str, operation: str) -> Iterator[None]:
    """Hold the lease of the VM name ``name`` (a create or clone making it)."""
    from kvmgr.control.plane import vm_name_key

    with state.plane().lease(vm_name_key(state.host_name(), name), operation):
        yield


def report_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`KvmgrError` into one clear line on stderr and exit status 1.

    A ``libvirtError`` or ``OSError`` that a service let through gets the same treatment
    (:func:`kvmgr.errors.at_the_boundary`): users see a sentence, not a traceback.
    """

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except Exception as raised:
            err = at_the_boundary(raised)
            if err is None:
                raise
            err_console.print(f"[bold red]error:[/] {err.message}", highlight=False)
            if err.hint:
                err_console.print(f"[yellow]hint:[/] {err.hint}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


@contextmanager
def progress(message: str) -> Iterator[None]:
    """A spinner on stderr while a long step runs (hidden when stderr is not a terminal)."""
    with err_console.status(message):
        yield


def authz() -> Authz:
    """The input checks of kvmgr.control.authz for the CLI's caller (an admin of the socket it
    opened): paths resolved, system directories refused, templates' disks never attached."""
    return authz_on(conn(), state.host_name())


def authz_on(connection: Connection, host: str) -> Authz:
    """:func:`authz` for registered host ``host`` over ``connection`` (placement asks each)."""
    from kvmgr.control.authz import Authz, cli_principal, state_dirs
    from kvmgr.statedir import state_dir_from_environment

    return Authz(
        connection,
        cli_principal(),
        state.plane().store,
        host=host,
        # Settings().state_dir without importing pydantic-settings (0.5-1.2 s of start-up)
        state_dirs=state_dirs(state_dir_from_environment()),
        relative_paths=True,
    )
