"""OS profiles: the facts VM creation needs about a guest OS, from osinfo-db or generic defaults.

This module turns database entries into :class:`OSProfile`; it decides no VM defaults itself
beyond the fallbacks for numbers the database does not give.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from kvmgr.errors import NotFound
from kvmgr.osinfo.db import (
    Q35_ID,
    VIRTIO1_IDS,
    VIRTIO_BLOCK_IDS,
    VIRTIO_NET_IDS,
    OsEntry,
    OsinfoDb,
    get_db,
)
from kvmgr.units import GIB

GENERIC_SHORT_ID = "generic"
GENERIC_MEMORY = 2 * GIB
GENERIC_VCPUS = 2
GENERIC_DISK = 20 * GIB
DEFAULT_ARCH = "x86_64"


@dataclass(frozen=True)
class OSProfile:
    short_id: str  # e.g. "centos7.0", "rocky9", "debian12", "win10", or "generic"
    name: str  # "CentOS 7", ...
    family: str | None  # "linux", "winnt", ...
    distro: str | None  # "centos", "rhel", "debian", "ubuntu", "win", ...
    version: str | None
    arch: str  # "x86_64"
    recommended_memory: int  # bytes
    recommended_vcpus: int
    recommended_disk: int  # bytes
    minimum_memory: int  # bytes (0 if unknown)
    virtio: bool  # virtio-blk and virtio-net drivers in the installer/OS
    q35: bool  # safe to use the q35 machine (PCIe); False for very old OSes
    uefi: bool  # supports UEFI firmware
    kickstart: bool  # unattended install via kickstart (RHEL family)
    #: Setup refuses the machine without TPM 2.0 and UEFI Secure Boot (Windows 11 and later).
    tpm_secure_boot: bool = False


def generic_profile(arch: str = DEFAULT_ARCH) -> OSProfile:
    """Defaults for an OS kvmgr knows nothing about: a modern Linux."""
    return OSProfile(
        short_id=GENERIC_SHORT_ID,
        name="Generic OS",
        family=None,
        distro=None,
        version=None,
        arch=arch,
        recommended_memory=GENERIC_MEMORY,
        recommended_vcpus=GENERIC_VCPUS,
        recommended_disk=GENERIC_DISK,
        minimum_memory=0,
        virtio=True,
        q35=True,
        uefi=True,
        kickstart=False,
    )


def _recommended(db: OsinfoDb, entry: OsEntry, arch: str, name: str, generic: int) -> int:
    """osinfo's recommended value; else twice the minimum; else the generic default."""
    recommended = db.resource(entry, arch, "recommended", name)
    minimum = db.resource(entry, arch, "minimum", name)
    if recommended is not None:
        return max(recommended, minimum or 0)
    if minimum is not None:
        return minimum * 2
    return generic


def _uefi(db: OsinfoDb, entry: OsEntry, arch: str, q35: bool) -> bool:
    declared = db.firmware_supported(entry, arch, "efi")
    if declared is not None:
        return declared
    # osinfo-db records EFI support only for some lines; a Linux that knows PCIe/q35 is from the
    # UEFI era.  Anything else (old Windows, BSDs) gets BIOS, which always works.
    return q35 and entry.family == "linux"


#: Windows releases that need TPM 2.0 and Secure Boot although the installed osinfo-db may not
#: say so: Server 2025 has the same hardware floor as Windows 11 (Microsoft's requirements) and
#: is not in every osinfo-db (not in Debian 12's); an entry that lacks the firmware lines would
#: otherwise get BIOS and fail at Setup.
_TPM_SECURE_BOOT_IDS = frozenset({"win11", "win2k25"})


def _tpm_secure_boot(db: OsinfoDb, entry: OsEntry, arch: str) -> bool:
    # osinfo-db has no TPM or Secure Boot element; what it does record for Windows 11 is
    # <firmware type="bios" supported="false">.  For Windows that is the Windows 11 floor
    # (TPM 2.0, UEFI with Secure Boot), and it is inherited by entries deriving from it.
    if entry.family != "winnt":
        return False
    return (
        entry.short_id in _TPM_SECURE_BOOT_IDS
        or db.firmware_supported(entry, arch, "bios") is False
    )


def profile_for(db: OsinfoDb, entry: OsEntry, arch: str = DEFAULT_ARCH) -> OSProfile:
    """The profile of one database entry for ``arch``, inheriting through derives-from/clones."""
    devices = db.devices(entry)
    virtio = bool(devices & set(VIRTIO_BLOCK_IDS)) and bool(devices & set(VIRTIO_NET_IDS))
    # An OS with virtio 1.0 (modern, PCIe-native) drivers runs fine on q35 even where
    # osinfo-db does not list the chipset, unless the database explicitly says no.
    q35 = Q35_ID not in db.unsupported_devices(entry) and (
        Q35_ID in devices or bool(devices & set(VIRTIO1_IDS))
    )
    minimum_memory = db.resource(entry, arch, "minimum", "ram") or 0
    return OSProfile(
        short_id=entry.short_id,
        name=entry.name,
        family=entry.family,
        distro=entry.distro,
        version=entry.version,
        arch=arch,
        recommended_memory=_recommended(db, entry, arch, "ram", GENERIC_MEMORY),
        recommended_vcpus=_recommended(db, entry, arch, "n-cpus", GENERIC_VCPUS),
        recommended_disk=_recommended(db, entry, arch, "storage", GENERIC_DISK),
        minimum_memory=minimum_memory,
        virtio=virtio,
        q35=q35,
        uefi=_uefi(db, entry, arch, q35),
        kickstart=any("/kickstart/" in script for script in db.scripts(entry)),
        tpm_secure_boot=_tpm_secure_boot(db, entry, arch),
    )


def get_profile(short_id: str, arch: str = DEFAULT_ARCH) -> OSProfile:
    """The profile of an OS by short id (``rocky9``), or ``generic``.

    Raises :class:`NotFound` with the closest known ids for an unknown one.
    """
    if short_id == GENERIC_SHORT_ID:
        return generic_profile(arch)
    db = get_db()
    entry = db.get(short_id)
    if entry is None:
        close = difflib.get_close_matches(short_id, db.short_ids(), n=5, cutoff=0.6)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else "use 'generic' or an osinfo-db short id such as rocky9, debian12, win10"
        )
        raise NotFound(f"unknown OS {short_id!r}", hint=hint)
    return profile_for(db, entry, arch)
