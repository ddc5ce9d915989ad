"""A UNIX-socket proxy in front of libvirtd that cuts the connection after the n-th RPC message.

libvirt's RPC messages start with their length (4 bytes, big-endian, counting itself), so the
proxy can count whole client messages.  Cutting right after forwarding message n looks to the
client exactly like a daemon that died while handling it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path


class CuttingProxy:
    """Listens on ``path``; each client is forwarded to ``upstream`` until ``cut_after``."""

    def __init__(self, path: Path, upstream: str) -> None:
        self.path = path
        self.upstream = upstream
        #: Cut once the connection's client messages reach this count (None: never); read at
        #: every message, so a test may move it while a long-lived connection stays open.
        self.cut_after: int | None = None
        self.messages = 0  # client messages seen on the newest connection
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(16)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.path}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.upstream)
            self.messages = 0
            # Replies are passed through as they come (their count does not matter).
            threading.Thread(target=self._relay, args=(server, client), daemon=True).start()
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source, sink)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        pending = b""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                pending += data
                while len(pending) >= 4:
                    (length,) = struct.unpack(">I", pending[:4])
                    if len(pending) < length:
                        break
                    sink.sendall(pending[:length])
                    pending = pending[length:]
                    self.messages += 1
                    if self.cut_after is not None and self.messages >= self.cut_after:
                        return  # the "daemon" dies with this message unanswered
        except OSError:
            pass
        finally:
            _close(source, sink)


def _close(*ends: socket.socket) -> None:
    for end in ends:
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
        end.close()


@contextlib.contextmanager
def cutting_proxy(directory: Path, upstream: str) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(directory / "cut.sock", upstream)
    try:
        yield proxy
    finally:
        proxy.close()


def cut_points(messages: int, most: int = 6) -> list[int]:
    """Where to cut a run of ``messages``: after each, or at ``most`` points spread over it."""
    if messages <= most:
        return list(range(1, messages + 1))
    step = messages / most
    return sorted({max(1, round(step * i)) for i in range(1, most + 1)})


def small_domain_xml(name: str) -> str:
    """A shut-off VM with nothing behind it: something real for commands to read."""
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type>hvm</type></os></domain>"
    )
