"""Connections to libvirt: URIs, the kvm/qemu decision, and the connection object services use."""

from kvmgr.connect.connection import (
    Connection,
    DomainTypeChoice,
    choose_domain_type,
    libvirt_version,
    open_connection,
)
from kvmgr.connect.uri import default_uri, is_local, validate_uri

__all__ = [
    "Connection",
    "DomainTypeChoice",
    "choose_domain_type",
    "default_uri",
    "is_local",
    "libvirt_version",
    "open_connection",
    "validate_uri",
]
