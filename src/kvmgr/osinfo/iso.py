"""Read the identity of an ISO 9660 image: its primary volume descriptor (PVD).

Only the volume descriptor set is read (sector 16 onwards, a few KiB), so a 4 GiB DVD image is
identified as fast as a 1 MiB one.  pycdlib would also parse the path tables and the root
directory, which detection does not need; the layout below is ECMA-119 section 8.4.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kvmgr.errors import InvalidInput, NotFound

SECTOR_SIZE = 2048
# The volume descriptor set starts at logical sector 16; the 32 KiB before it are the system
# area (a hybrid ISO keeps its MBR/GPT there).
_DESCRIPTOR_SET_START = 16 * SECTOR_SIZE
# A real image has 2-5 descriptors (PVD, El Torito boot record, Joliet SVD, terminator).  Stop
# looking after this many so a corrupt file cannot make us read far.
_MAX_DESCRIPTORS = 32
_STANDARD_ID = b"CD001"

_TYPE_BOOT_RECORD = 0
_TYPE_PRIMARY = 1
_TYPE_TERMINATOR = 255
_EL_TORITO_ID = b"EL TORITO SPECIFICATION"

# Field offsets inside the primary volume descriptor (ECMA-119 8.4).
_SYSTEM_ID = slice(8, 40)
_VOLUME_ID = slice(40, 72)
_VOLUME_SPACE_SIZE_LE = slice(80, 84)  # both-endian field: the little-endian half comes first
_LOGICAL_BLOCK_SIZE_LE = slice(128, 130)
_PUBLISHER_ID = slice(318, 446)
_APPLICATION_ID = slice(574, 702)


@dataclass(frozen=True)
class IsoDescriptor:
    """The identifying fields of an ISO image, as osinfo-db media entries describe them."""

    path: str
    volume_id: str
    system_id: str
    publisher_id: str
    application_id: str
    volume_size: int  # bytes: logical block size x volume space size
    bootable: bool  # has an El Torito boot record


def _text(raw: bytes) -> str:
    """A d-/a-character field: space padded (some mastering tools pad with NUL)."""
    return raw.decode("latin-1").rstrip(" \x00")


def _is_descriptor(sector: bytes) -> bool:
    return len(sector) == SECTOR_SIZE and sector[1:6] == _STANDARD_ID


def _parse_primary(path: str, sector: bytes, bootable: bool) -> IsoDescriptor:
    space_size = int.from_bytes(sector[_VOLUME_SPACE_SIZE_LE], "little")
    block_size = int.from_bytes(sector[_LOGICAL_BLOCK_SIZE_LE], "little")
    return IsoDescriptor(
        path=path,
        volume_id=_text(sector[_VOLUME_ID]),
        system_id=_text(sector[_SYSTEM_ID]),
        publisher_id=_text(sector[_PUBLISHER_ID]),
        application_id=_text(sector[_APPLICATION_ID]),
        volume_size=space_size * block_size,
        bootable=bootable,
    )


def read_descriptor(path: str | Path) -> IsoDescriptor:
    """Read the primary volume descriptor of the ISO image at ``path``.

    Raises :class:`NotFound` for a missing file and :class:`InvalidInput` ("not an ISO image")
    for anything without an ISO 9660 volume descriptor set.
    """
    name = os.fspath(path)
    try:
        handle = open(name, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError as err:
        raise NotFound(f"ISO file {name} does not exist", hint="check the path") from err
    except IsADirectoryError as err:
        raise InvalidInput(f"{name} is a directory, not an ISO image") from err
    except PermissionError as err:
        raise InvalidInput(f"cannot read {name}: permission denied") from err
    with handle:
        return _scan_descriptors(name, handle)


def _scan_descriptors(name: str, handle: BinaryIO) -> IsoDescriptor:
    handle.seek(_DESCRIPTOR_SET_START)
    return _find_primary(name, iter(lambda: handle.read(SECTOR_SIZE), b""))


def parse_descriptor_set(name: str, image_start: bytes) -> IsoDescriptor:
    """The descriptor from the first bytes of an image (e.g. downloaded from a remote volume)."""
    sectors = (
        image_start[offset : offset + SECTOR_SIZE]
        for offset in range(_DESCRIPTOR_SET_START, len(image_start), SECTOR_SIZE)
    )
    return _find_primary(name, sectors)


def _find_primary(name: str, sectors: Iterator[bytes]) -> IsoDescriptor:
    primary: bytes | None = None
    bootable = False
    for _, sector in zip(range(_MAX_DESCRIPTORS), sectors, strict=False):
        if not _is_descriptor(sector):
            break
        kind = sector[0]
        if kind == _TYPE_PRIMARY and primary is None:
            primary = sector
        elif kind == _TYPE_BOOT_RECORD and sector[7:30] == _EL_TORITO_ID:
            bootable = True
        elif kind == _TYPE_TERMINATOR:
            break
    if primary is None:
        raise InvalidInput(
            f"{name} is not an ISO image (no ISO 9660 primary volume descriptor)",
            hint="give the path of an installation .iso file",
        )
    return _parse_primary(name, primary, bootable)


def is_iso(path: str | Path) -> bool:
    """True when ``path`` is a readable file with an ISO 9660 primary volume descriptor."""
    try:
        read_descriptor(path)
    except (InvalidInput, NotFound):
        return False
    return True
