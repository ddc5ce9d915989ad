"""Validation of the names users give to VMs, networks, pools, volumes and snapshots.

One rule everywhere, so a name accepted by the CLI is accepted by the API and by libvirt, and a
name can never smuggle a path or XML into anything.
"""

from __future__ import annotations

import re

from kvmgr.errors import InvalidInput

MAX_NAME_LENGTH = 64
#: ``--host auto`` asks placement for a host, so no host may be registered under this name.
AUTO_HOST = "auto"
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_RULE = "letters, digits, '-', '_' and '.', at most 64, not starting with '.' or '-'"


def validate_name(name: str, *, what: str = "name") -> str:
    """Return ``name`` if it is acceptable, else raise :class:`InvalidInput` saying the rule."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{what} must not be empty", hint=f"use {_RULE}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"{what} {name[:20]!r}... is {len(name)} characters long",
            hint=f"use at most {MAX_NAME_LENGTH}",
        )
    if not _NAME_RE.fullmatch(name):  # fullmatch: "$" would accept a trailing newline
        raise InvalidInput(f"{what} {name!r} is not allowed", hint=f"use {_RULE}")
    return name


_MAX_EXISTING_LENGTH = 255


def validate_existing_name(name: str, *, what: str = "name") -> str:
    """Accept the name of an object that already exists, made by virsh, virt-install or by hand.

    libvirt allows names kvmgr would never give (spaces, ``@``, non-ASCII), and such VMs must stay
    manageable.  A lookup name goes to libvirt as an RPC argument, never into XML or a path, so
    only what no libvirt object can be called is refused: empty, overlong, ``/``, control
    characters.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{what} must not be empty")
    if len(name) > _MAX_EXISTING_LENGTH:
        raise InvalidInput(f"{what} {name[:20]!r}... is longer than {_MAX_EXISTING_LENGTH}")
    if "/" in name or any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise InvalidInput(f"{what} {name!r} cannot name a libvirt object", hint=f"use {_RULE}")
    return name
