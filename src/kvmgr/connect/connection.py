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
            hint=_connect_hint(uri),
        ) from err
    return Connection(uri=uri, virconn=virconn)


def _connect_hint(uri: str) -> str:
    if uri.startswith("test:"):
        return "the test driver's file must be a valid <node> document"
    if is_local(uri):
        return "is libvirtd running? start it with 'kvmgr host daemons start'"
    return "check the host name, that libvirtd runs there, and your SSH/TLS credentials"


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
