"""A VM's serial console through libvirt's stream API, for programs and for people.

Everything goes through ``virDomain.openConsole`` on a non-blocking ``virStream``, so it works the
same for a local daemon and for ``qemu+ssh://`` hosts; kvmgr never opens the pty itself.

:class:`ConsoleSession` is for programs and tests (read, write, expect a pattern).
:func:`attach_interactive` is ``kvmgr vm console``: the terminal in raw mode, stdin to the guest,
guest to stdout, until the escape key (``Ctrl+]``).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import (
    Busy,
    InvalidInput,
    InvalidState,
    OperationFailed,
    libvirt_errors,
    translate,
)
from kvmgr.names import validate_existing_name

#: How long a read sleeps between polls of a stream with no data: low CPU, ~20 ms latency.
POLL_INTERVAL = 0.02
_CHUNK = 64 * 1024
#: Output kept for error messages and for :meth:`ConsoleSession.expect` searches.
_BUFFER_LIMIT = 256 * 1024


class ConsoleTimeout(OperationFailed):
    """The expected output did not appear on the console in time."""


class ConsoleBusy(Busy):
    """Someone else has the console open, and the caller did not ask to take it over."""


class ConsoleSession:
    """An open serial console of one running VM.

    ``force`` takes the console over from whoever has it open (their session ends).  People's
    sessions (``vm console``, the web UI) pass the user's choice: a second viewer must not
    silently throw the first one off.  kvmgr's own short sessions (waiting for a marker) and
    library callers default to taking over.
    """

    def __init__(
        self, conn: Connection, name: str, *, device: str | None = None, force: bool = True
    ) -> None:
        validate_existing_name(name, what="VM name")
        self.name = name
        from kvmgr.services.vms import lookup  # the one "VM 'x' does not exist" message

        self._dom = lookup(conn, name)
        if not self._dom.isActive():
            raise InvalidState(f"VM {name} is not running", hint=f"start it: kvmgr vm start {name}")
        flags = libvirt.VIR_DOMAIN_CONSOLE_FORCE if force else libvirt.VIR_DOMAIN_CONSOLE_SAFE
        with libvirt_errors(f"opening the console of VM {name}"):
            self._stream = conn.virconn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        try:
            self._dom.openConsole(device, self._stream, flags)
        except libvirt.libvirtError as err:
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.abort()
            if "active console session" in (err.get_error_message() or "").lower():
                raise ConsoleBusy(
                    f"the serial console of VM {name} is open in another session",
                    hint="--force takes it over (the other session is disconnected)",
                ) from err
            raise translate(err, f"opening the console of VM {name}") from err
        self._pending = b""  # read from the stream but not yet consumed by expect()
        self.transcript = b""  # the most recent output, for error messages
        self._closed = False

    # ----------------------------------------------------------------- raw I/O
    def _recv(self) -> bytes | None:
        """Bytes available now; b"" when none yet; None when the console closed."""
        try:
            data = self._stream.recv(_CHUNK)
        except libvirt.libvirtError:
            return None  # "stream had I/O failure": another session took the console over
        if data == -2:  # VIR_STREAM_NONBLOCK: nothing to read at the moment
            return b""
        if isinstance(data, bytes) and data:
            self.transcript = (self.transcript + data)[-_BUFFER_LIMIT:]
            return data
        return None  # 0 bytes: end of stream (the VM stopped or someone forced us off)

    def read(self, timeout: float = 0.0) -> bytes:
        """Whatever output arrives within ``timeout`` seconds (returns as soon as there is some)."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        deadline = time.monotonic() + timeout
        while True:
            received = self._recv()
            if received is None:
                raise InvalidState(
                    f"the console of VM {self.name} closed (the VM stopped, or another "
                    "session took it over)"
                )
            if received or time.monotonic() >= deadline:
                return received
            time.sleep(POLL_INTERVAL)

    def write(self, data: bytes | str) -> None:
        """Send ``data`` to the guest, all of it (the stream may accept it in pieces)."""
        payload = data.encode() if isinstance(data, str) else data
        while payload:
            with libvirt_errors(f"writing to the console of VM {self.name}"):
                sent = self._stream.send(payload)
            if sent == -2:
                time.sleep(POLL_INTERVAL)
                continue
            if sent < 0:
                raise OperationFailed(f"writing to the console of VM {self.name} failed")
            payload = payload[sent:]

    def expect(self, pattern: str | bytes | re.Pattern[bytes], timeout: float) -> re.Match[bytes]:
        """Wait until ``pattern`` appears in the output; the output up to its end is consumed.

        Raises :class:`ConsoleTimeout` with the last output when it does not appear in time.
        """
        regex = _compile(pattern)
        deadline = time.monotonic() + timeout
        seen = self._pending
        self._pending = b""
        while True:
            match = regex.search(seen)
            if match:
                self._pending = seen[match.end() :]
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._pending = seen[-_BUFFER_LIMIT:]
                tail = self.transcript[-600:].decode(errors="replace")
                raise ConsoleTimeout(
                    f"{regex.pattern!r} did not appear on the console of VM {self.name} "
                    f"within {timeout:g} s; last output:\n{tail}",
                    hint="is the guest still booting, or did it stop at an error shown above?",
                )
            seen = (seen + self.read(min(remaining, 0.5)))[-_BUFFER_LIMIT:]

    def drain(self, quiet: float = 0.3) -> bytes:
        """Read until the console has been silent for ``quiet`` seconds; return what came."""
        collected = b""
        while True:
            data = self.read(quiet)
            if not data:
                return collected
            collected += data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A console has no end of data to agree on; abort just drops our side, as virsh does.
        # It fails only when the VM or the connection is gone already: nothing left to close.
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.abort()

    def __enter__(self) -> ConsoleSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _compile(pattern: str | bytes | re.Pattern[bytes]) -> re.Pattern[bytes]:
    if isinstance(pattern, re.Pattern):
        return pattern
    return re.compile(pattern.encode() if isinstance(pattern, str) else pattern)


def open_console(conn: Connection, name: str) -> ConsoleSession:
    return ConsoleSession(conn, name)


# ------------------------------------------------------------------------- interactive
def escape_byte(escape: str) -> int:
    """``^]`` -> 0x1d: the byte that ends an interactive session."""
    if len(escape) == 2 and escape[0] == "^" and 0x40 <= ord(escape[1].upper()) <= 0x5F:
        return ord(escape[1].upper()) - 0x40
    if len(escape) == 1:
        return ord(escape)
    raise InvalidInput(f"escape key {escape!r} is not one key", hint="use e.g. ^] or ^O")


@contextmanager
def _raw_terminal(stream: IO[Any]) -> Iterator[None]:
    """Raw mode for the duration of the block; the old mode comes back on every exit path."""
    if not stream.isatty():
        yield
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach_interactive(
    conn: Connection,
    name: str,
    escape: str = "^]",
    *,
    stdin: IO[Any] | None = None,
    stdout: IO[Any] | None = None,
    force: bool = False,
    attached: Callable[[], None] | None = None,
) -> None:
    """Connect this terminal to the VM's serial console until the escape key or the VM stops.

    Refused with :class:`ConsoleBusy` while another session has it, unless ``force``.
    ``attached`` runs once the console is open (``vm start --console`` resumes the VM it
    started paused there, so the first line of the boot is shown).
    """
    escape_code = escape_byte(escape)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    in_fd, out_fd = stdin.fileno(), stdout.fileno()
    with ConsoleSession(conn, name, force=force) as session, _raw_terminal(stdin):
        os.write(out_fd, f"Connected to {name}; {escape} to leave.\r\n".encode())
        if attached is not None:
            attached()
        while True:
            ready, _, _ = select.select([in_fd], [], [], POLL_INTERVAL)
            if ready:
                typed = os.read(in_fd, 1024)
                if not typed:
                    break  # stdin closed
                if escape_code in typed:
                    session.write(typed[: typed.index(escape_code)])
                    break
                session.write(typed)
            try:
                output = session.read(0)
            except InvalidState:
                os.write(out_fd, b"\r\n[console closed]\r\n")
                break
            if output:
                os.write(out_fd, output)
        os.write(out_fd, b"\r\n")
