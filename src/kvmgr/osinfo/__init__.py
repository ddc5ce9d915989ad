"""Operating-system knowledge: the osinfo-db reader, ISO descriptors and media detection.

Public API (other modules code against these names)::

    read_descriptor(path) -> IsoDescriptor
    detect_iso(path) -> Detection
    get_profile(short_id, arch="x86_64") -> OSProfile
    generic_profile(arch="x86_64") -> OSProfile
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kvmgr.osinfo.iso import IsoDescriptor, is_iso, read_descriptor
from kvmgr.osinfo.profiles import (
    DEFAULT_ARCH,
    GENERIC_SHORT_ID,
    OSProfile,
    generic_profile,
    get_profile,
    profile_for,
)

__all__ = [
    "GENERIC_SHORT_ID",
    "Detection",
    "IsoDescriptor",
    "OSProfile",
    "detect_descriptor",
    "detect_iso",
    "generic_profile",
    "get_profile",
    "is_iso",
    "read_descriptor",
]


@dataclass(frozen=True)
class Detection:
    profile: OSProfile  # the generic profile when nothing matched
    matched: bool
    volume_id: str
    system_id: str
    publisher_id: str
    application_id: str
    volume_size: int
    candidates: list[str] = field(default_factory=list)  # every matching OS, best first


def detect_descriptor(iso: IsoDescriptor, arch: str = DEFAULT_ARCH) -> Detection:
    """Match an already read descriptor against osinfo-db (see :mod:`kvmgr.osinfo.db`)."""
    from kvmgr.osinfo.db import get_db

    db = get_db()
    matches = db.match_media(iso)
    if matches:
        best = matches[0]
        media_arch = best.media.arch if best.media.arch != "all" else arch
        profile = profile_for(db, best.os, media_arch)
    else:
        profile = generic_profile(arch)
    return Detection(
        profile=profile,
        matched=bool(matches),
        volume_id=iso.volume_id,
        system_id=iso.system_id,
        publisher_id=iso.publisher_id,
        application_id=iso.application_id,
        volume_size=iso.volume_size,
        candidates=[match.os.short_id for match in matches],
    )


def detect_iso(path: str | Path) -> Detection:
    """Identify the OS on an installation ISO from its volume descriptor (reads a few KiB)."""
    return detect_descriptor(read_descriptor(path))
