"""Kickstart validation with pykickstart, for the release the kickstart is meant for.

A kickstart anaconda cannot parse stops the install at its first screen, long after kvmgr made
the VM; parsing it first with the same grammar (pykickstart is anaconda's parser) turns that into
a refusal with the parser's own message, before anything is made.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from typing import Any

from kvmgr.errors import InvalidInput, Unsupported
from kvmgr.osinfo.db import OsEntry

#: osinfo-db distros whose releases follow RHEL's kickstart grammar, by major version.
RHEL_LIKE = (
    "rhel", "centos", "centos-stream", "rocky", "almalinux", "ol", "circle", "scientificlinux",
    "eurolinux", "miraclelinux", "asianux", "cclinux", "anolis", "navy",
)  # fmt: skip


def _major(version: str | None) -> int | None:
    head = (version or "").split(".")[0].split("-")[0]
    return int(head) if head.isdigit() else None


def pykickstart_version(os_entry: OsEntry) -> str:
    """pykickstart's version name ("RHEL9", "F38", "DEVEL") for the OS."""
    from pykickstart.version import versionMap

    major = _major(os_entry.version)
    if "coreos" in os_entry.short_id or "silverblue" in os_entry.short_id:
        raise Unsupported(
            f"{os_entry.name} is not installed with kickstart", hint="use its own installer"
        )
    if os_entry.distro == "fedora":
        newest = max(int(key[1:]) for key in versionMap if re.fullmatch(r"F\d+", key))
        if major is None or major > newest:
            return f"F{newest}"  # "fedora-unknown", or newer than this pykickstart
        name = f"F{major}" if major >= 7 else f"FC{major}"
        if name not in versionMap:
            raise Unsupported(f"pykickstart has no grammar for {os_entry.name}")
        return name
    if os_entry.distro in RHEL_LIKE or (os_entry.distro or "").startswith("centos"):
        if major is None:
            raise Unsupported(f"cannot tell which RHEL release {os_entry.name} follows")
        name = f"RHEL{major}"
        if name not in versionMap:
            raise Unsupported(f"pykickstart does not know {name} yet", hint="update pykickstart")
        return name
    raise Unsupported(f"{os_entry.name} is not installed with kickstart")


@functools.cache
def _pristine_handler(version: str) -> Any:
    from pykickstart.version import makeVersion

    return makeVersion(version)


def handler(version: str) -> Any:
    """A fresh pykickstart handler for ``version``: a copy of a cached one, since making one
    registers every command's argument parser (~0.3 s) and a copy takes a tenth of that."""
    return copy.deepcopy(_pristine_handler(version))


def has_command(version: str, command: str) -> bool:
    return command in _pristine_handler(version).commands


def validate_kickstart(text: str, version: str, *, what: str = "kickstart") -> None:
    """Parse ``text`` with ``version``'s grammar; InvalidInput with the parser's message."""
    from pykickstart.errors import KickstartError, KickstartParseWarning
    from pykickstart.parser import KickstartParser

    parser = KickstartParser(handler(version), followIncludes=False)
    try:
        with warnings.catch_warnings():
            # Deprecated commands (install, authconfig on RHEL 8+) are warnings in ksvalidator
            # too: anaconda ignores them.  Anything else it cannot parse is an error here.
            warnings.simplefilter("error", category=KickstartParseWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)  # checked first
            parser.readKickstartFromString(text)
    except (KickstartError, KickstartParseWarning) as err:
        raise InvalidInput(
            f"{what} is not a valid {version} kickstart: {err}",
            hint="fix the kickstart (pykickstart's ksvalidator shows the same message)",
        ) from err
