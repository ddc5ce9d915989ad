"""What every command group shares: the connection from ``--connect``, the control plane, and
error reporting."""

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
    "name_lease",
    "progress",
    "report_errors",
    "state",
    "vm_lease",
]
from kvmgr.connect import Connection, open_connection
from kvmgr.errors import KvmgrError

if TYPE_CHECKING:
    from kvmgr.control.authz import Authz
    from kvmgr.control.plane import ControlPlane

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class CLIState:
    """Set by the root callback from the global options."""

    uri: str | None = None
    _conn: Connection | None = field(default=None, repr=False)
    _plane: ControlPlane | None = field(default=None, repr=False)

    def connection(self) -> Connection:
        """Open the connection on first use, so commands that need none start fast."""
        if self._conn is None:
            self._conn = open_connection(self.uri)
        return self._conn

    def host_name(self) -> str:
        """The name of the host this command acts on (one host until the host registry)."""
        return "local"

    def plane(self, *, recover: bool = True) -> ControlPlane:
        """The control plane over the store of ``KVMGR_DB_URL``, opened on first use.

        Opening it recovers what dead kvmgr processes left (one query when nothing is pending)
        and says on stderr what it did (not with ``recover=False``: ``kvmgr ops recover``).
        """
        from kvmgr.api.settings import Settings

        url = Settings().database_url
        if self._plane is not None and self._plane.store.url != url:
            self._close_plane()  # in-process callers (tests) may point elsewhere in between
        if self._plane is None:
            import pwd

            from kvmgr.control.plane import ControlPlane
            from kvmgr.store.db import Store

            user = pwd.getpwuid(os.geteuid()).pw_name
            self._plane = ControlPlane(Store(url), f"cli:{user}", lambda _host: self.connection())
            for outcome in self._plane.recover() if recover else []:
                err_console.print(f"[yellow]recovered:[/] {outcome.line()}", highlight=False)
        return self._plane

    def _close_plane(self) -> None:
        if self._plane is not None:
            self._plane.store.dispose()
            self._plane = None

    def close(self) -> None:
        self._close_plane()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


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
def name_lease(name: str, operation: str) -> Iterator[None]:
    """Hold the lease of the VM name ``name`` (a create or clone making it)."""
    from kvmgr.control.plane import vm_name_key

    with state.plane().lease(vm_name_key(state.host_name(), name), operation):
        yield


def report_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`KvmgrError` into one clear line on stderr and exit status 1."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except KvmgrError as err:
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
    from kvmgr.api.settings import Settings
    from kvmgr.control.authz import Authz, cli_principal, state_dirs

    plane = state.plane()
    return Authz(
        conn(),
        cli_principal(),
        plane.store,
        host=state.host_name(),
        state_dirs=state_dirs(Settings().state_dir),
    )
