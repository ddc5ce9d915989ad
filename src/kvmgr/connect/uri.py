"""libvirt connection URIs: which default, which are accepted, and whether a URI is local."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from kvmgr.errors import InvalidInput

DEFAULT_URI = "qemu:///system"
URI_ENV = "KVMGR_URI"

# Drivers kvmgr manages.  ``test`` is libvirt's simulated hypervisor, used by the unit tests.
_DRIVERS = {"qemu", "test"}
_TRANSPORTS = {"", "ssh", "tcp", "tls", "unix", "libssh", "libssh2"}


def default_uri() -> str:
    """The URI used when none is given: ``$KVMGR_URI``, else ``qemu:///system``."""
    return os.environ.get(URI_ENV) or DEFAULT_URI


def validate_uri(uri: str) -> str:
    """Accept ``qemu[+transport]://[user@host]/system|session`` and ``test:///...`` URIs."""
    parts = urlsplit(uri)
    driver, _, transport = parts.scheme.partition("+")
    hint = "use e.g. qemu:///system, qemu+ssh://root@host/system or test:///default"
    if not parts.scheme or driver not in _DRIVERS or transport not in _TRANSPORTS:
        raise InvalidInput(f"unsupported libvirt URI {uri!r}", hint=hint)
    if driver == "qemu" and parts.path not in ("/system", "/session"):
        raise InvalidInput(f"libvirt URI {uri!r} must end in /system or /session", hint=hint)
    if driver == "test" and not parts.path:
        raise InvalidInput(f"test URI {uri!r} needs a path", hint="use test:///default")
    if transport and transport != "unix" and not parts.hostname:
        raise InvalidInput(f"remote URI {uri!r} names no host", hint=hint)
    return uri


def is_local(uri: str) -> bool:
    """True when the hypervisor of ``uri`` runs on this machine (so /dev/kvm can be probed)."""
    parts = urlsplit(uri)
    return not parts.hostname or parts.hostname in ("localhost", "127.0.0.1", "::1")
