"""A small NBD client: what reading libvirt's pull-mode backup export needs, and no more.

libvirt's pull-mode backup (``virDomainBackupBegin`` with ``mode='pull'``) exports each disk's
point-in-time view through QEMU's NBD server: on a UNIX socket when the VM runs on this machine,
on TCP with TLS when it runs on another host (:mod:`.export` decides).  This client speaks the
fixed newstyle handshake, upgrades to TLS first when given a context (``NBD_OPT_STARTTLS``: the
server refuses every other option before it), asks for structured replies and the meta
contexts ``base:allocation`` (holes and zeros) and ``qemu:dirty-bitmap:<bitmap>`` (blocks
changed since a checkpoint), and then reads extents and data.  Requests are pipelined (several
in flight), which is what makes a Python client keep up with the server.  Protocol:
https://github.com/NetworkBlockDevice/nbd (doc/proto.md).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from kvmgr.errors import OperationFailed

_NBDMAGIC = b"NBDMAGIC"
_IHAVEOPT = 0x49484156454F5054
_REPLY_MAGIC = 0x0003E889045565A9
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY_MAGIC = 0x67446698
_STRUCTURED_REPLY_MAGIC = 0x668E33EF

_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2

_OPT_STARTTLS = 5
_OPT_GO = 7
_OPT_STRUCTURED_REPLY = 8
_OPT_SET_META_CONTEXT = 10
_REP_ACK = 1
_REP_INFO = 3
_REP_META_CONTEXT = 4
_REP_ERROR_BIT = 1 << 31
_REP_ERR_TLS_REQD = _REP_ERROR_BIT | 5
_INFO_EXPORT = 0

_CMD_READ = 0
_CMD_DISC = 2
_CMD_BLOCK_STATUS = 7

_REPLY_FLAG_DONE = 1
_REPLY_TYPE_NONE = 0
_REPLY_TYPE_OFFSET_DATA = 1
_REPLY_TYPE_OFFSET_HOLE = 2
_REPLY_TYPE_BLOCK_STATUS = 5
_REPLY_TYPE_ERROR_BIT = 1 << 15

#: base:allocation flags
STATE_HOLE = 1
STATE_ZERO = 2
#: qemu:dirty-bitmap flag
STATE_DIRTY = 1

#: QEMU's NBD server refuses requests above 32 MiB.
MAX_REQUEST = 32 * 1024 * 1024
ALLOCATION = "base:allocation"


class NBDError(OperationFailed):
    """The NBD server refused a request or broke the protocol."""


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    flags: int


class NBDClient:
    """One export of an NBD server, with the meta contexts asked for.

    ``address`` is a UNIX socket path or a ``(host, port)`` pair; with ``tls`` the connection
    is upgraded before any other option, and the server's certificate must name
    ``server_name`` (default: the host connected to).  ``timeout`` bounds the connect and the
    handshake.
    """

    def __init__(
        self,
        address: str | tuple[str, int],
        export: str,
        contexts: list[str],
        *,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self._sock: socket.socket
        if isinstance(address, str):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(timeout)
            try:
                self._sock.connect(address)
            except BaseException:
                self._sock.close()
                raise
        else:
            self._sock = socket.create_connection(address, timeout=timeout)
            # Requests are small and pipelined: Nagle would hold each one back for an ACK.
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._cookie = 0
        self.contexts: dict[str, int] = {}
        self.size = 0
        self.tls_version: str | None = None
        try:
            self._handshake(export, contexts, tls, server_name or _host_of(address))
            # ``timeout`` bounds reaching the server and the handshake; a backup's reads may
            # wait as long as QEMU takes.
            self._sock.settimeout(None)
        except BaseException:
            self._sock.close()
            raise

    # ------------------------------------------------------------------------- handshake
    def _handshake(
        self, export: str, contexts: list[str], tls: ssl.SSLContext | None, server_name: str
    ) -> None:
        head = self._recv(18)
        if head[:8] != _NBDMAGIC or struct.unpack(">Q", head[8:16])[0] != _IHAVEOPT:
            raise NBDError("the backup export is not a newstyle NBD server")
        (flags,) = struct.unpack(">H", head[16:18])
        if not flags & _FLAG_FIXED_NEWSTYLE:
            raise NBDError("the NBD server does not speak fixed newstyle")
        self._sock.sendall(struct.pack(">I", _FLAG_FIXED_NEWSTYLE | (flags & _FLAG_NO_ZEROES)))
        if tls is not None:
            self._start_tls(tls, server_name)
        self._option(_OPT_STRUCTURED_REPLY, b"")
        if self._reply(_OPT_STRUCTURED_REPLY)[0] != _REP_ACK:
            raise NBDError("the NBD server offers no structured replies")
        name = export.encode()
        body = struct.pack(">I", len(name)) + name + struct.pack(">I", len(contexts))
        for context in contexts:
            body += struct.pack(">I", len(context.encode())) + context.encode()
        self._option(_OPT_SET_META_CONTEXT, body)
        while True:
            kind, data = self._reply(_OPT_SET_META_CONTEXT)
            if kind == _REP_ACK:
                break
            if kind == _REP_META_CONTEXT:
                self.contexts[data[4:].decode()] = struct.unpack(">I", data[:4])[0]
        missing = [context for context in contexts if context not in self.contexts]
        if missing:
            raise NBDError(f"the NBD export {export!r} has no meta context {', '.join(missing)}")
        self._option(_OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        while True:
            kind, data = self._reply(_OPT_GO)
            if kind == _REP_ACK:
                break
            if kind == _REP_INFO and struct.unpack(">H", data[:2])[0] == _INFO_EXPORT:
                self.size = struct.unpack(">Q", data[2:10])[0]

    def _start_tls(self, tls: ssl.SSLContext, server_name: str) -> None:
        self._option(_OPT_STARTTLS, b"")
        if self._reply(_OPT_STARTTLS)[0] != _REP_ACK:
            raise NBDError("the NBD server did not accept NBD_OPT_STARTTLS")
        try:
            self._sock = tls.wrap_socket(self._sock, server_hostname=server_name)
        except ssl.SSLError as err:
            raise NBDError(
                f"the TLS handshake with the NBD server {server_name} failed: {err.reason or err}",
                hint="the host's qemu must use a certificate of the CA kvmgr trusts "
                "(backup_tls_x509_cert_dir in qemu.conf), and accept kvmgr's client certificate",
            ) from err
        self.tls_version = self._sock.version() if isinstance(self._sock, ssl.SSLSocket) else None

    def _option(self, option: int, data: bytes) -> None:
        self._sock.sendall(struct.pack(">QII", _IHAVEOPT, option, len(data)) + data)

    def _reply(self, option: int) -> tuple[int, bytes]:
        magic, got, kind, length = struct.unpack(">QIII", self._recv(20))
        data = self._recv(length) if length else b""
        if magic != _REPLY_MAGIC or got != option:
            raise NBDError("the NBD server answered an option out of turn")
        if kind == _REP_ERR_TLS_REQD:
            raise NBDError(
                "the NBD server requires TLS", hint="connect with the host's TLS credentials"
            )
        if kind & _REP_ERROR_BIT:
            detail = data.decode(errors="replace")
            raise NBDError(f"the NBD server refused option {option}: {detail}")
        return kind, data

    # ------------------------------------------------------------------------- transmission
    def _request(self, command: int, offset: int, length: int, flags: int = 0) -> int:
        self._cookie += 1
        cookie = self._cookie
        self._sock.sendall(
            struct.pack(">IHHQQI", _REQUEST_MAGIC, flags, command, cookie, offset, length)
        )
        return self._cookie

    def block_status(self, context: str, offset: int, length: int) -> list[Extent]:
        """Extents of ``context`` from ``offset`` (the server may describe less than asked)."""
        context_id = self.contexts[context]
        cookie = self._request(_CMD_BLOCK_STATUS, offset, min(length, 0xFFFFFFFF))
        extents: list[Extent] = []
        for kind, payload in self._structured(cookie):
            if kind != _REPLY_TYPE_BLOCK_STATUS:
                continue
            (got,) = struct.unpack(">I", payload[:4])
            if got != context_id:
                continue
            at = offset
            for index in range(4, len(payload), 8):
                size, state = struct.unpack(">II", payload[index : index + 8])
                extents.append(Extent(at, size, state))
                at += size
        return extents

    def extents(self, context: str, offset: int = 0, end: int | None = None) -> Iterator[Extent]:
        """Every extent of ``context`` over ``[offset, end)``, asking as often as needed."""
        end = self.size if end is None else end
        while offset < end:
            batch = self.block_status(context, offset, end - offset)
            if not batch:
                raise NBDError(f"the NBD server described no extent at {offset}")
            for extent in batch:
                length = min(extent.length, end - extent.offset)
                yield Extent(extent.offset, length, extent.flags)
                offset = extent.offset + length
                if offset >= end:
                    break

    def read_many(self, ranges: list[tuple[int, int]], window: int = 8) -> Iterator[bytearray]:
        """The data of each ``(offset, length)`` in order, ``window`` requests in flight.

        The server may answer pipelined requests in any order; each reply is received straight
        into its own buffer, and buffers are handed out in request order.
        """
        queued = iter(ranges)
        order: list[int] = []
        buffers: dict[int, tuple[bytearray, int]] = {}
        finished: set[int] = set()

        def send_next() -> None:
            nxt = next(queued, None)
            if nxt is not None:
                cookie = self._request(_CMD_READ, *nxt)
                order.append(cookie)
                buffers[cookie] = (bytearray(nxt[1]), nxt[0])  # holes stay zero

        for _ in range(window):
            send_next()
        while order:
            while order[0] not in finished:
                finished.update(self._read_chunk(buffers))
            cookie = order.pop(0)
            finished.discard(cookie)
            yield buffers.pop(cookie)[0]
            send_next()

    def _read_chunk(self, buffers: dict[int, tuple[bytearray, int]]) -> list[int]:
        """Receive one reply chunk of any read in flight; returns the cookie if it completed."""
        head = self._recv(8)
        (magic,) = struct.unpack(">I", head[:4])
        if magic == _SIMPLE_REPLY_MAGIC:
            error, cookie = struct.unpack(">IQ", head[4:] + self._recv(8))
            if error:
                raise NBDError(f"the NBD server failed a read: error {error}")
            self._recv_into(memoryview(buffers[cookie][0]))
            return [cookie]
        if magic != _STRUCTURED_REPLY_MAGIC:
            raise NBDError("the NBD server sent a reply with a bad magic")
        flags, kind = struct.unpack(">HH", head[4:8])
        cookie, length = struct.unpack(">QI", self._recv(12))
        if cookie not in buffers:
            raise NBDError("the NBD server answered a request never made")
        buf, base = buffers[cookie]
        if kind == _REPLY_TYPE_OFFSET_DATA:
            (at,) = struct.unpack(">Q", self._recv(8))
            start = at - base
            self._recv_into(memoryview(buf)[start : start + length - 8])
        else:
            payload = self._recv(length) if length else b""
            if kind & _REPLY_TYPE_ERROR_BIT:
                (error,) = struct.unpack(">I", payload[:4])
                raise NBDError(f"the NBD server failed a read: error {error}")
            # OFFSET_HOLE: the buffer is zero there already; NONE: nothing to add
        return [cookie] if flags & _REPLY_FLAG_DONE else []

    def _structured(self, cookie: int) -> Iterator[tuple[int, bytes]]:
        """Chunks of the reply to ``cookie`` (the only request in flight)."""
        while True:
            head = self._recv(8)
            (magic,) = struct.unpack(">I", head[:4])
            if magic == _SIMPLE_REPLY_MAGIC:
                error, _got = struct.unpack(">IQ", head[4:] + self._recv(8))
                if error:
                    raise NBDError(f"the NBD server failed a request: error {error}")
                return
            if magic != _STRUCTURED_REPLY_MAGIC:
                raise NBDError("the NBD server sent a reply with a bad magic")
            flags, kind = struct.unpack(">HH", head[4:8])
            got, length = struct.unpack(">QI", self._recv(12))
            payload = self._recv(length) if length else b""
            if got != cookie:
                raise NBDError("the NBD server answered a request never made")
            if kind & _REPLY_TYPE_ERROR_BIT:
                (error,) = struct.unpack(">I", payload[:4])
                raise NBDError(f"the NBD server failed a request: error {error}")
            if kind != _REPLY_TYPE_NONE:
                yield kind, payload
            if flags & _REPLY_FLAG_DONE:
                return

    def _recv(self, count: int) -> bytes:
        buf = bytearray(count)
        self._recv_into(memoryview(buf))
        return bytes(buf)

    def _recv_into(self, view: memoryview) -> None:
        while len(view):
            got = self._sock.recv_into(view)
            if got == 0:
                raise NBDError("the NBD server closed the connection")
            view = view[got:]

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a server gone first needs no goodbye
            self._request(_CMD_DISC, 0, 0)
        self._sock.close()

    def __enter__(self) -> NBDClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _host_of(address: str | tuple[str, int]) -> str:
    return address if isinstance(address, str) else address[0]
