"""A VM's graphical display: what it is, and a forwarder that puts it on a loopback TCP port.

kvmgr gives its VMs VNC on a unix socket only; VMs made by virt-install may listen on TCP, with
or without a password.  ``vm vnc --listen`` serves a local viewer through :class:`Forwarder`,
which speaks RFB itself on both sides:

- to the viewer it offers only VNC authentication (security type 2) with a random one-time
  password (DES challenge-response, RFC 6143 7.2.2).  QEMU refuses ``set_password`` on a VNC
  server started without one, and a forwarder without a password would open the console to
  every local user; checking the password in the forwarder works for every VM without changing
  its definition.
- to QEMU it connects through libvirt (``virDomainOpenGraphicsFD`` with ``SKIPAUTH``: a socket
  pair passed over libvirt's unix socket, so no access to QEMU's socket file is needed), does
  the no-authentication handshake (or the VM's own password where a remote QEMU asks for it),
  and then relays the bytes: ClientInit, ServerInit and everything after them are the same in
  every protocol version, so the two handshakes need not agree on one.

File descriptors cannot be passed over ssh or TLS, so on a remote host the forwarder reaches
only a display that listens on a TCP address of that host; a unix socket there is refused with
a hint (an ssh tunnel).  The password is used up by the first viewer that gives it; wrong
answers are counted and the forwarder stops after :data:`MAX_FAILURES`.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import secrets
import socket
import string
import struct
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import libvirt

from kvmgr.connect import Connection
from kvmgr.connect.uri import is_local
from kvmgr.errors import Forbidden, InvalidInput, InvalidState, KvmgrError
from kvmgr.services.vms import definition, lookup, state_of
from kvmgr.xml.domain import Domain

#: RFB security types (RFC 6143 7.2).
SEC_INVALID, SEC_NONE, SEC_VNC_AUTH = 0, 1, 2
VERSION_3_3, VERSION_3_7, VERSION_3_8 = (3, 3), (3, 7), (3, 8)
#: VNC passwords are 8 bytes at most (the DES key); 8 of 62 characters is about 2^47.
PASSWORD_LENGTH = 8
_ALPHABET = string.ascii_letters + string.digits
#: Wrong answers before the forwarder stops: guessing 2^47 passwords needs more than a few.
MAX_FAILURES = 5
#: Seconds a viewer may take for the handshake (a stuck client must not hold the one password).
HANDSHAKE_SECONDS = 30.0
_POLL = 0.25  # seconds between checks of the stop conditions while waiting for viewers
#: What libvirt means by a TCP display without a listen address (kvmgr never listens there).
WILDCARD = "0.0.0.0"  # noqa: S104 - read from definitions, never bound by kvmgr


class RFBError(KvmgrError):
    """The other side did not speak RFB as expected (or closed the connection)."""


# ----------------------------------------------------------------------------- what the VM has
@dataclass(frozen=True)
class Display:
    """One ``<graphics>`` device of a VM's live definition."""

    index: int
    type: str | None  # vnc, spice, ...
    listen: str | None  # socket, address, network, none
    address: str | None  # the listen address of a TCP display
    socket: str | None  # the unix socket path of a socket display
    port: int | None  # the TCP port, once QEMU runs (None for autoport before start)
    password: bool  # the display asks its own password (``passwd``)

    @property
    def where(self) -> str:
        """``unix:PATH`` or ``HOST:PORT``, as people read it."""
        if self.socket:
            return f"unix:{self.socket}"
        if self.port is not None:
            host = self.address or WILDCARD
            return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        return self.listen or "none"

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        del data["index"]
        return data


def displays(spec: Domain) -> list[Display]:
    """The graphics of a definition; pass the live one (``definition(dom)``) for real ports.

    The definition must be read with ``VIR_DOMAIN_XML_SECURE`` (as :func:`definition` does),
    or libvirt leaves ``passwd`` out and every display looks unprotected.
    """
    found = []
    for index, gfx in enumerate(spec.devices.graphics):
        listen = gfx.listen_type or ("address" if gfx.listen or gfx.port else None)
        port = gfx.port if gfx.port is not None and gfx.port > 0 else None
        found.append(
            Display(
                index=index,
                type=gfx.type,
                listen=listen,
                address=gfx.listen_address or gfx.listen,
                socket=gfx.listen_socket or gfx.socket,
                port=port,
                password=bool(gfx.passwd),
            )
        )
    return found


def vnc_display(conn: Connection, name: str) -> tuple[libvirt.virDomain, Display]:
    """The running VM's VNC display, or why there is none to forward."""
    dom = lookup(conn, name)
    if state_of(dom) not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
        raise InvalidState(
            f"VM {name!r} is not running", hint=f"start it first: 'kvmgr vm start {name}'"
        )
    for display in displays(definition(dom)):
        if display.type == "vnc":
            return dom, display
    raise InvalidState(
        f"VM {name!r} has no VNC display",
        hint="'kvmgr vm info' shows its graphics; kvmgr makes VMs with VNC unless "
        "'--graphics none' was given",
    )


def _vm_password(dom: libvirt.virDomain, display: Display) -> str | None:
    """The VM's own VNC password, read from the secure definition (only a remote QEMU that asks
    for it needs it: a descriptor from libvirt skips QEMU's authentication)."""
    if not display.password:
        return None
    gfx = definition(dom).devices.graphics[display.index]
    return gfx.passwd


def passes_descriptors(uri: str) -> bool:
    """libvirt passes file descriptors only over its local unix socket (not ssh, TLS, TCP)."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    return transport == "unix" or (transport == "" and not parts.hostname)


def reachable_display(conn: Connection, name: str) -> tuple[libvirt.virDomain, Display]:
    """The VM's VNC display, refused at once (before anything listens) when this connection
    cannot reach it: a remote host's unix socket or loopback port needs a tunnel."""
    dom, display = vnc_display(conn, name)
    if not passes_descriptors(conn.uri):
        _network_address(conn, name, display, "it cannot pass descriptors over this transport")
    return dom, display


def open_display(conn: Connection, name: str) -> tuple[socket.socket, str | None]:
    """A socket connected to the VM's VNC server, and the password that server will ask for
    (``None`` when it asks none).

    Through libvirt when it can pass a descriptor (a local connection): the display then needs
    no password, its socket file need not be readable by us, and libvirtd's network namespace
    does not matter.  Otherwise (ssh, TLS) the display's TCP port on the remote host.
    """
    dom, display = reachable_display(conn, name)
    reason = "it cannot pass descriptors over this transport"
    if passes_descriptors(conn.uri):
        try:
            fd = dom.openGraphicsFD(display.index, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)
        except libvirt.libvirtError as err:
            reason = err.get_error_message() or str(err)
        else:
            return socket.socket(fileno=fd), None
    host, port = _network_address(conn, name, display, reason)
    try:
        sock = socket.create_connection((host, port), timeout=HANDSHAKE_SECONDS)
    except OSError as err:
        raise InvalidState(
            f"cannot reach the VNC display of VM {name!r} at {host}:{port}: {err}",
            hint=f"a firewall may block it; tunnel it: ssh -L 5999:127.0.0.1:{port} {host}, "
            "then a viewer on 127.0.0.1:5999",
        ) from err
    return sock, _vm_password(dom, display)


def _network_address(conn: Connection, name: str, display: Display, reason: str) -> tuple[str, int]:
    """Where a display listens on TCP, as seen from here; why it cannot be reached if not."""
    host = urlsplit(conn.uri).hostname or "127.0.0.1"
    loopback_only = False
    if display.port is not None and display.listen in ("address", "network"):
        listen = display.address or WILDCARD
        try:
            address = ipaddress.ip_address(listen)
        except ValueError:
            return listen, display.port  # a host name: used as it is
        if address.is_unspecified:
            return host, display.port  # every address of the VM's host: reached at its name
        if not address.is_loopback or is_local(conn.uri):
            return listen, display.port
        loopback_only = True  # the remote host's own loopback
    target = display.socket or f"127.0.0.1:{display.port}"
    raise InvalidState(
        f"cannot reach the VNC display of VM {name!r} ({display.where} on {host}): libvirt "
        f"could not pass it ({reason})" + (", and it listens on loopback only" * loopback_only),
        hint=f"run kvmgr on the VM's host, or tunnel it: ssh -L 5999:{target} "
        f"{host if urlsplit(conn.uri).hostname else 'HOST'}, then a viewer on 127.0.0.1:5999",
    )


# ----------------------------------------------------------------------------- RFB pieces
def new_password() -> str:
    """A random VNC password of the full 8 characters."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(PASSWORD_LENGTH))


def des_key(password: str) -> bytes:
    """The DES key VNC derives from a password: 8 bytes, zero padded, each byte's bits mirrored
    (RFB's historical quirk; RFC 6143 leaves it out, every implementation does it)."""
    raw = password.encode("latin-1", errors="replace")[:PASSWORD_LENGTH].ljust(
        PASSWORD_LENGTH, b"\0"
    )
    return bytes(int(f"{byte:08b}"[::-1], 2) for byte in raw)


def des_encrypt(key: bytes, data: bytes) -> bytes:
    """Single DES in ECB mode over ``data`` (a multiple of 8 bytes).

    cryptography offers single DES only as TripleDES with one key three times (K1=K2=K3 is DES).
    """
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    # ECB over two independent blocks is what RFB specifies; nothing else is encrypted here
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(data) + encryptor.finalize()


def auth_response(password: str, challenge: bytes) -> bytes:
    """The answer to a 16-byte VNC authentication challenge."""
    if len(challenge) != 16:
        raise RFBError(f"a VNC challenge has 16 bytes, not {len(challenge)}")
    return des_encrypt(des_key(password), challenge)


def parse_version(banner: bytes) -> tuple[int, int]:
    """``b"RFB 003.008\\n"`` -> ``(3, 8)``."""
    if (
        len(banner) != 12
        or not banner.startswith(b"RFB ")
        or banner[7:8] != b"."
        or banner[-1:] != b"\n"
    ):
        raise RFBError(f"not an RFB protocol version: {banner[:12]!r}")
    try:
        return int(banner[4:7]), int(banner[8:11])
    except ValueError:
        raise RFBError(f"not an RFB protocol version: {banner!r}") from None


def viewer_version(version: tuple[int, int]) -> tuple[int, int]:
    """The version a server uses with a client that asked for ``version`` (RFC 6143 7.1.1:
    other 3.x numbers are treated as 3.3; Apple's 3.889 is 3.8)."""
    if version[0] != 3:
        raise RFBError(f"unsupported RFB version {version[0]}.{version[1]}")
    if version[1] >= 8:
        return VERSION_3_8
    return VERSION_3_7 if version[1] == 7 else VERSION_3_3


def banner_of(version: tuple[int, int]) -> bytes:
    return b"RFB %03d.%03d\n" % version


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes, or :class:`RFBError` if the peer closes first."""
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise RFBError("the connection closed during the RFB handshake")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _reason(sock: socket.socket) -> str:
    (length,) = struct.unpack(">I", recv_exact(sock, 4))
    return recv_exact(sock, min(length, 4096)).decode("utf-8", errors="replace")


def serve_vnc_auth(
    sock: socket.socket, check: Callable[[bytes, bytes], bool], *, challenge: bytes | None = None
) -> bool:
    """The server side of the handshake up to SecurityResult, offering VNC authentication only.

    ``check(challenge, response)`` decides (it may use the password up); on a wrong answer the
    viewer is told "authentication failed" and False is returned.
    """
    sock.sendall(banner_of(VERSION_3_8))
    version = viewer_version(parse_version(recv_exact(sock, 12)))
    if version == VERSION_3_3:
        sock.sendall(struct.pack(">I", SEC_VNC_AUTH))  # 3.3: the server decides
    else:
        sock.sendall(bytes([1, SEC_VNC_AUTH]))
        chosen = recv_exact(sock, 1)[0]
        if chosen != SEC_VNC_AUTH:
            _fail(sock, version, "only VNC authentication is offered")
            return False
    challenge = challenge or secrets.token_bytes(16)
    sock.sendall(challenge)
    if not check(challenge, recv_exact(sock, 16)):
        _fail(sock, version, "authentication failed")
        return False
    sock.sendall(struct.pack(">I", 0))
    return True


def _fail(sock: socket.socket, version: tuple[int, int], reason: str) -> None:
    message = struct.pack(">I", 1)
    if version == VERSION_3_8:  # only 3.8 carries a reason
        text = reason.encode()
        message += struct.pack(">I", len(text)) + text
    with contextlib.suppress(OSError):
        sock.sendall(message)


def client_handshake(sock: socket.socket, password: str | None = None) -> tuple[int, int]:
    """The client side up to SecurityResult: no authentication when the server offers it, VNC
    authentication with ``password`` otherwise.  Returns the version agreed on."""
    version = min(parse_version(recv_exact(sock, 12)), VERSION_3_8)
    if version < VERSION_3_3:
        raise RFBError(f"unsupported RFB server version {version[0]}.{version[1]}")
    version = viewer_version(version)
    sock.sendall(banner_of(version))
    chosen = _choose_security(sock, version, password)
    if chosen == SEC_VNC_AUTH:
        if password is None:
            raise RFBError("the VNC server asks a password and the VM's definition has none")
        sock.sendall(auth_response(password, recv_exact(sock, 16)))
    elif chosen != SEC_NONE:
        raise RFBError(f"the VNC server chose security type {chosen}, which kvmgr cannot answer")
    if chosen == SEC_VNC_AUTH or version == VERSION_3_8:
        (result,) = struct.unpack(">I", recv_exact(sock, 4))
        if result != 0:
            why = _reason(sock) if version == VERSION_3_8 else "authentication failed"
            raise RFBError(f"the VNC server refused the handshake: {why}")
    return version


def _choose_security(sock: socket.socket, version: tuple[int, int], password: str | None) -> int:
    """None when offered, else VNC authentication when we have a password (3.3: the server's
    choice)."""
    if version == VERSION_3_3:
        (chosen,) = struct.unpack(">I", recv_exact(sock, 4))
        if chosen == SEC_INVALID:
            raise RFBError(f"the VNC server refused the connection: {_reason(sock)}")
        return int(chosen)
    count = recv_exact(sock, 1)[0]
    if count == 0:
        raise RFBError(f"the VNC server refused the connection: {_reason(sock)}")
    offered = set(recv_exact(sock, count))
    if SEC_NONE in offered:
        chosen = SEC_NONE
    elif SEC_VNC_AUTH in offered and password is not None:
        chosen = SEC_VNC_AUTH
    else:
        raise RFBError(
            f"the VNC server offers security types {sorted(offered)}, none that kvmgr "
            "can answer (1: none, 2: VNC password)"
        )
    sock.sendall(bytes([chosen]))
    return chosen


def relay(one: socket.socket, other: socket.socket) -> None:
    """Copy bytes both ways until either side closes; then both are shut down."""

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (one, other):  # unblocks the other direction's recv
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    back = threading.Thread(target=pump, args=(other, one), daemon=True, name="vnc-relay")
    back.start()
    pump(one, other)
    back.join()


# ----------------------------------------------------------------------------- listening
def parse_listen(text: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); loopback unless allowed."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    hint = "give --listen 127.0.0.1:PORT (or just PORT; 0 picks a free one)"
    try:
        port = int(port_text)
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(f"--listen {text!r} is not ADDRESS:PORT", hint=hint) from None
    if not 0 <= port <= 65535:
        raise InvalidInput(f"port {port} is out of range", hint=hint)
    if not address.is_loopback and not allow_remote:
        raise InvalidInput(
            f"{host} is not a loopback address: anyone who reaches it could try the password, "
            "and VNC traffic is not encrypted",
            hint="listen on 127.0.0.1 and tunnel it (ssh -L PORT:127.0.0.1:PORT THIS-HOST), "
            "or pass --allow-remote to listen there anyway",
        )
    return host, port


@dataclass
class SessionEnd:
    """How a forwarder's run ended."""

    served: bool  # a viewer authenticated and its session has ended
    failures: int  # wrong passwords given
    stopped: bool  # stopped from outside (``stop()``, or ``should_stop`` said so)


class Forwarder:
    """One VNC display on a TCP listener, for one viewer that knows the one-time password.

    ``opener`` connects to the VM's display and returns the socket and the password that
    display asks (see :func:`open_display`); it is called only once a viewer has authenticated.
    """

    def __init__(
        self,
        opener: Callable[[], tuple[socket.socket, str | None]],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        password: str | None = None,
        max_failures: int = MAX_FAILURES,
    ) -> None:
        self.password = password or new_password()
        self._opener = opener
        self._max_failures = max_failures
        self._lock = threading.Lock()
        self._used = False
        self._failures = 0
        self._done = threading.Event()
        self._stopped = False
        self.error: KvmgrError | None = None  # why the served session could not reach the VM
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((host, port))
        except OSError as err:
            self._listener.close()
            raise InvalidInput(
                f"cannot listen on {host}:{port}: {err.strerror}",
                hint="choose another port (0 picks a free one)",
            ) from err
        self._listener.listen(4)
        self._listener.settimeout(_POLL)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"vnc://[{host}]:{port}" if ":" in host else f"vnc://{host}:{port}"

    def stop(self) -> None:
        self._stopped = True
        self._done.set()

    def serve(self, should_stop: Callable[[], bool] = lambda: False) -> SessionEnd:
        """Accept viewers until the one that authenticated has left, too many answers were
        wrong, or ``should_stop()`` (polled every quarter second) or :meth:`stop` says so."""
        try:
            while not self._done.is_set():
                if should_stop():
                    self._stopped = True
                    break
                try:
                    viewer, _peer = self._listener.accept()
                except TimeoutError:
                    continue
                threading.Thread(
                    target=self._session, args=(viewer,), daemon=True, name="vnc-viewer"
                ).start()
        finally:
            self._listener.close()
        return SessionEnd(served=self._used, failures=self._failures, stopped=self._stopped)

    def _check(self, challenge: bytes, response: bytes) -> bool:
        """The password's one use: right and not used yet; a wrong answer counts."""
        expected = auth_response(self.password, challenge)
        with self._lock:
            if not self._used and hmac.compare_digest(expected, response):
                self._used = True
                return True
            self._failures += 1
            if self._failures >= self._max_failures and not self._used:
                self._done.set()
            return False

    def _session(self, viewer: socket.socket) -> None:
        with viewer:
            viewer.settimeout(HANDSHAKE_SECONDS)
            try:
                if not serve_vnc_auth(viewer, self._check):
                    return
            except (OSError, RFBError):
                return  # a viewer that went away or spoke something else: not a guess
            try:
                display, vm_password = self._opener()
                with display:
                    display.settimeout(HANDSHAKE_SECONDS)
                    client_handshake(display, vm_password)
                    display.settimeout(None)
                    viewer.settimeout(None)
                    relay(viewer, display)
            except KvmgrError as err:
                self.error = err
            except OSError as err:
                self.error = RFBError(f"the VM's VNC server: {err}")
            finally:
                self._done.set()  # the password is spent: nothing more to serve


def too_many_failures(end: SessionEnd) -> Forbidden:
    return Forbidden(
        f"{end.failures} wrong VNC passwords: the forwarder stopped",
        hint="run 'kvmgr vm vnc NAME --listen ...' again for a new password",
    )
