"""The kvmgr exception family, and the one place where ``libvirtError`` is translated.

Every error a user can see is a :class:`KvmgrError` whose message says what went wrong and,
where we know it, what to do about it.  Interfaces (CLI, REST, web) catch ``KvmgrError`` and show
its message; anything else is a bug and may show a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec, TypeVar

import libvirt

P = ParamSpec("P")
R = TypeVar("R")


class KvmgrError(Exception):
    """Base of every error kvmgr reports to a user."""

    #: HTTP status the REST API answers with for this kind of error.
    http_status = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InvalidInput(KvmgrError):
    """A name, size, path, URI, XML document or request body is not acceptable."""

    http_status = 422


class NotFound(KvmgrError):
    """The named VM, network, pool, volume, snapshot or ISO does not exist."""

    http_status = 404


class AlreadyExists(KvmgrError):
    """An object with that name exists already."""

    http_status = 409


class InvalidState(KvmgrError):
    """The object is in a state where the operation cannot run (e.g. deleting a running VM)."""

    http_status = 409


class Forbidden(KvmgrError):
    """The caller is known but may not do this (role, or not the owner of an object it names)."""

    http_status = 403


class Busy(KvmgrError):
    """Another operation holds the object's lock."""

    http_status = 409


class Unsupported(KvmgrError):
    """This host, guest or libvirt version cannot do what was asked."""

    http_status = 501


class ConnectionFailed(KvmgrError):
    """The libvirt daemon could not be reached."""

    http_status = 503


class HostError(KvmgrError):
    """A host-level operation (packages, daemons, bridges) failed."""


class OperationFailed(KvmgrError):
    """libvirt refused or failed an operation for a reason not covered by a narrower class."""


# libvirt error codes grouped by the kvmgr error they become.  Named constants, never numbers.
_NOT_FOUND_CODES = {
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_NETWORK,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
    libvirt.VIR_ERR_NO_INTERFACE,
    libvirt.VIR_ERR_NO_NWFILTER,
    libvirt.VIR_ERR_NO_SECRET,
    libvirt.VIR_ERR_NO_NODE_DEVICE,
}
_INVALID_STATE_CODES = {libvirt.VIR_ERR_OPERATION_INVALID}
_INVALID_INPUT_CODES = {
    libvirt.VIR_ERR_XML_ERROR,
    libvirt.VIR_ERR_XML_DETAIL,
    libvirt.VIR_ERR_INVALID_ARG,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
}
_UNSUPPORTED_CODES = {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED}
_BUSY_CODES = {libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_ERR_AGENT_UNRESPONSIVE}
_CONNECTION_CODES = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_AUTH_FAILED,
    libvirt.VIR_ERR_INVALID_CONN,
}


def translate(err: libvirt.libvirtError, doing: str) -> KvmgrError:
    """Turn a ``libvirtError`` into the kvmgr error a user can act on.

    ``doing`` names what kvmgr was doing ("starting VM web01") so the message reads as a sentence.
    """
    code = err.get_error_code()
    detail = (err.get_error_message() or str(err)).strip()
    message = f"{doing} failed: {detail}"
    if code in _NOT_FOUND_CODES:
        return NotFound(message)
    if code == libvirt.VIR_ERR_OPERATION_INVALID and "already" in detail:
        return InvalidState(message)
    if code in _INVALID_STATE_CODES:
        return InvalidState(message)
    if code in _INVALID_INPUT_CODES:
        return InvalidInput(message)
    if code in _UNSUPPORTED_CODES:
        return Unsupported(message)
    if code in _BUSY_CODES:
        return Busy(message, hint="another operation holds the object; try again")
    if code == libvirt.VIR_ERR_DOM_EXIST or "already exists" in detail:
        return AlreadyExists(message)
    if code in _CONNECTION_CODES and doing.startswith("connecting"):
        return ConnectionFailed(
            message,
            hint="is libvirtd running? start it with 'kvmgr host daemons start'",
        )
    if connection_lost(err):
        return ConnectionFailed(
            f"lost the connection to libvirt while {doing}: {detail}",
            hint="the daemon stopped or restarted: check it ('kvmgr host daemons status') and "
            "run the command again; kvmgr finishes or undoes a half-done operation on its "
            "next run",
        )
    if "swtpm_setup" in detail:
        # A new TPM's state could not be made (libvirt names only the log).  The cause seen in
        # practice is swtpm's local CA owned by root after a daemon ran swtpm as root.
        return OperationFailed(
            message,
            hint="the log it names says why; 'kvmgr host check' looks at swtpm's local CA "
            "and 'kvmgr host setup' repairs its ownership",
        )
    return OperationFailed(message)


#: What libvirt says when the daemon went away under a call (the codes vary by where it noticed).
_LOST_CONNECTION_TEXT = (
    "client socket is closed",
    "end of file while reading data",
    "cannot recv data",
    "cannot write data",
    "connection reset",
    "broken pipe",
    "no connection driver available",
    "connection is closed",
)


def connection_lost(err: libvirt.libvirtError) -> bool:
    """True when ``err`` says the connection to the daemon is gone (not that a call failed)."""
    if err.get_error_code() in (libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_NO_CONNECT):
        return True
    detail = (err.get_error_message() or str(err)).lower()
    return any(text in detail for text in _LOST_CONNECTION_TEXT)


def at_the_boundary(err: BaseException) -> KvmgrError | None:
    """The kvmgr error an interface shows for an exception that escaped a service, or None.

    Services translate libvirt's errors where they call it; this is the last line for a call
    that did not (a lookup when the connection drops), and for a file that could not be read
    or written.  A user sees one clear line, never a traceback; anything else is a bug.
    """
    if isinstance(err, KvmgrError):
        return err
    if isinstance(err, libvirt.libvirtError):
        return translate(err, "talking to libvirt")
    if isinstance(err, OSError):
        where = f" {err.filename}" if err.filename else ""
        return OperationFailed(f"cannot use{where}: {err.strerror or err}")
    if isinstance(err, ValueError) and "null byte" in str(err):
        # os.* refuses such a path; no file name can hold it (JSON bodies can carry \u0000)
        return InvalidInput(
            "a path or name contains a NUL character", hint="remove the \\0 from the value"
        )
    return None


@contextmanager
def libvirt_errors(doing: str) -> Iterator[None]:
    """Run a block of libvirt calls; any ``libvirtError`` leaves it as a kvmgr error."""
    try:
        yield
    except libvirt.libvirtError as err:
        raise translate(err, doing) from err


def wraps_libvirt(doing: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator form of :func:`libvirt_errors` for functions that are one libvirt action."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with libvirt_errors(doing):
                return func(*args, **kwargs)

        return wrapper

    return decorate
