"""What every command group shares: the connection from ``--connect``, and error reporting."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from typing import ParamSpec, TypeVar

import typer

from kvmgr.cli.output import err_console

__all__ = ["CLIState", "conn", "err_console", "progress", "report_errors", "state"]
from kvmgr.connect import Connection, open_connection
from kvmgr.errors import KvmgrError

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class CLIState:
    """Set by the root callback from the global options."""

    uri: str | None = None
    _conn: Connection | None = field(default=None, repr=False)

    def connection(self) -> Connection:
        """Open the connection on first use, so commands that need none start fast."""
        if self._conn is None:
            self._conn = open_connection(self.uri)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


state = CLIState()


def conn() -> Connection:
    """The libvirt connection for this command."""
    return state.connection()


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
