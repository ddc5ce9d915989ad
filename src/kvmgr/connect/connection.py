"""The one place that opens libvirt connections and decides the domain type (kvm or qemu).

``Connection`` owns a ``virConnect``.  Services receive a ``Connection`` and never open their own,
so a CLI command, an API request and a test all go through the same door.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field

import libvirt

from kvmgr.connect.events import ensure_event_loop
from kvmgr.connect.kvm_probe import cached_probe
from kvmgr.connect.uri import default_uri, is_local, validate_uri
from kvmgr.errors import ConnectionFailed, InvalidInput, libvirt_errors

DOMAIN_TYPE_ENV = "KVMGR_DOMAIN_TYPE"
_DOMAIN_TYPES = ("kvm", "qemu")


def _ignore_libvirt_error(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; kvmgr reports them itself."""


libvirt.registerErrorHandler(_ignore_libvirt_error, None)


@dataclass(frozen=True)
class DomainTypeChoice:
    """Which libvirt domain type new VMs get, and why (shown to the user)."""

    domain_type: str
    reason: str


@dataclass
class Connection:
    """An open libvirt connection plus what kvmgr learned about its host."""

    uri: str
    virconn: libvirt.virConnect
    _domain_type: DomainTypeChoice | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def is_test_driver(self) -> bool:
        return self.uri.startswith("test:")

    def domain_type(self) -> DomainTypeChoice:
        """The domain type for new VMs, chosen once per connection (:func:`choose_domain_type`)."""
        with self._lock:
            if self._domain_type is None:
                self._domain_type = choose_domain_type(self)
            return self._domain_type

    def close(self) -> None:
        # Closing a connection whose daemon went away is not an error worth reporting.
        with contextlib.suppress(libvirt.libvirtError):
            self.virconn.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_connection(uri: str | None = None, *, readonly: bool = False) -> Connection:
    """Open ``uri`` (default ``$KVMGR_URI`` or ``qemu:///system``) with a clear error on failure."""
    uri = validate_uri(uri or default_uri())
    ensure_event_loop()  # before opening: consoles and events need it on this connection
    try:
        virconn = libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as err:
        raise ConnectionFailed(
            f"cannot connect to {uri}: {err.get_error_message()}",
            hint=_connect_hint(uri, err.get_error_message() or ""),
        ) from err
    return Connection(uri=uri, virconn=virconn)


#: (transport, words in libvirt's message, what to do): the first match gives the hint.
_TRANSPORT_HINTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "ssh",
        ("host key verification failed",),
        "the host's SSH key is not known: 'ssh USER@HOST' once to check and accept it",
    ),
    (
        "ssh",
        ("permission denied", "publickey"),
        "SSH refused the login: give a key the host accepts (ssh-copy-id USER@HOST, or "
        "?keyfile=PATH in the URI)",
    ),
    ("ssh", ("connection refused",), "nothing listens for SSH there: is sshd running on the host?"),
    (
        "ssh",
        ("no route to host", "could not resolve", "name or service not known", "timed out"),
        "the host cannot be reached: check its name or address and the network",
    ),
    (
        "ssh",
        ("nc: ", "virt-ssh-helper", "command not found"),
        "libvirt's ssh transport needs virt-ssh-helper (or nc) on the host: install libvirt "
        "there ('kvmgr host add NAME ssh://root@HOST --setup')",
    ),
    (
        "ssh",
        ("failed to connect socket", "no such file"),
        "SSH worked but libvirtd does not run on the host: start it there",
    ),
    (
        "tls",
        ("certificate", "ca file", "cacert", "pkipath", "gnutls"),
        "TLS failed: check the CA, the client certificate and key (?pkipath=DIR in the URI) and "
        "that the server's certificate names the host",
    ),
    (
        "tls",
        ("connection refused",),
        "nothing listens for TLS there: libvirtd needs listen_tls (port 16514) or virtproxyd-tls",
    ),
    (
        "tcp",
        ("connection refused",),
        "nothing listens on libvirt's TCP port there (16509): libvirtd needs listen_tcp",
    ),
)


def _connect_hint(uri: str, detail: str = "") -> str:
    """What to do about a failed connection: by transport, and by what libvirt said."""
    if uri.startswith("test:"):
        return "the test driver's file must be a valid <node> document"
    scheme = uri.split(":", 1)[0]
    transport = scheme.partition("+")[2]
    if transport in ("", "unix") and is_local(uri):
        # The local socket: the daemon is the only thing that can be missing.  (ssh/tls/tcp to
        # 127.0.0.1 is "local" to the KVM probe, but fails for transport reasons.)
        return "is libvirtd running? start it with 'kvmgr host daemons start'"
    transport = transport or "tls"  # qemu://host/ is TLS in libvirt
    words = detail.lower()
    for kind, needles, hint in _TRANSPORT_HINTS:
        if kind == transport and any(needle in words for needle in needles):
            return hint
    if transport == "ssh":
        return "check the host name, your SSH key for it, and that libvirtd runs there"
    if transport == "tls":
        return "check the host name, the TLS certificates (?pkipath=DIR) and libvirtd's listen_tls"
    return "check the host name and that libvirtd runs and listens there"


def choose_domain_type(conn: Connection) -> DomainTypeChoice:
    """Pick ``kvm`` when guests really run under KVM on that host, else ``qemu`` (emulation).

    Order: ``$KVMGR_DOMAIN_TYPE`` if set; ``test`` for libvirt's test driver; for a local host the
    functional probe of /dev/kvm (cached while /dev/kvm and the kvm modules are unchanged, a
    negative answer only for a few minutes); for a remote host, libvirt's domain
    capabilities (kvmgr cannot run code there).
    """
    forced = os.environ.get(DOMAIN_TYPE_ENV)
    if forced:
        if forced not in (*_DOMAIN_TYPES, "test"):
            raise InvalidInput(f"{DOMAIN_TYPE_ENV}={forced!r} must be 'kvm' or 'qemu'")
        return DomainTypeChoice(forced, f"set by {DOMAIN_TYPE_ENV}")
    if conn.is_test_driver:
        return DomainTypeChoice("test", "libvirt test driver")
    if not _libvirt_offers_kvm(conn):
        return DomainTypeChoice("qemu", "libvirt reports no KVM support on this host: emulating")
    if not is_local(conn.uri):
        return DomainTypeChoice("kvm", "remote host: libvirt reports KVM support")
    probe = cached_probe()
    if probe.usable:
        return DomainTypeChoice("kvm", probe.reason)
    return DomainTypeChoice("qemu", f"KVM unusable ({probe.reason}); using software emulation")


def _libvirt_offers_kvm(conn: Connection) -> bool:
    try:
        conn.virconn.getDomainCapabilities(None, None, None, "kvm", 0)
    except libvirt.libvirtError:
        return False
    return True


def libvirt_version(conn: Connection) -> str:
    """The daemon's libvirt version as ``major.minor.micro``."""
    with libvirt_errors("reading the libvirt version"):
        number = conn.virconn.getLibVersion()
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
