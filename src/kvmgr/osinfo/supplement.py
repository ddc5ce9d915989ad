"""OS entries for releases newer than the osinfo-db a host may carry.

Debian 12's own package is osinfo-db 0.20221130, which predates Debian 12 and Fedora 38/39, so
their install ISOs would otherwise be "unknown media".  These entries follow osinfo-db's later
definitions: the same ids, media patterns and parent OS, with everything else (devices, firmware,
resources, install scripts) inherited from the parent through ``derives-from``.  A host whose
osinfo-db defines the same id replaces the entry here (see ``kvmgr.osinfo.db.get_db``).
"""

from __future__ import annotations

from kvmgr.osinfo.db import Media, OsEntry


def _debian(version: int, codename: str, released: str) -> OsEntry:
    # Netinst ("n") and DVD-1 ("1") volume ids of the point releases, e.g. "Debian 12.2.0 amd64 n".
    arches = {"x86_64": "amd64", "i686": "i386", "aarch64": "arm64"}
    installers = {"x86_64": "install.amd", "i686": "install.386", "aarch64": "install.a64"}
    media = tuple(
        Media(
            arch=arch,
            volume_id=rf"Debian {version}\.\d+\.\d+ {debian_arch} {kind}",
            kernel=f"{installers[arch]}/vmlinuz",
            initrd=f"{installers[arch]}/initrd.gz",
        )
        for arch, debian_arch in arches.items()
        for kind in ("n", "1")
    )
    return OsEntry(
        id=f"http://debian.org/debian/{version}",
        short_ids=(f"debian{version}", f"debian{codename}"),
        name=f"Debian {version}",
        vendor="Debian Project",
        family="linux",
        distro="debian",
        version=str(version),
        codename=codename,
        release_date=released,
        derives_from=(f"http://debian.org/debian/{version - 1}",),
        upgrades=(f"http://debian.org/debian/{version - 1}",),
        media=media,
    )


def _fedora(version: int, released: str) -> OsEntry:
    dvds = [
        Media(
            arch=arch,
            volume_id=f"Fedora-{edition}-dvd-{arch}-{version}",
            kernel="images/pxeboot/vmlinuz",
            initrd="images/pxeboot/initrd.img",
        )
        for arch in ("x86_64", "aarch64")
        for edition in ("S", "E")
    ]
    lives = [
        Media(arch="x86_64", volume_id=f"Fedora-{desktop}-Live-{version}.*", live=True)
        for desktop in ("WS", "KDE")
    ]
    media = (*dvds, *lives)
    return OsEntry(
        id=f"http://fedoraproject.org/fedora/{version}",
        short_ids=(f"fedora{version}",),
        name=f"Fedora Linux {version}",
        vendor="Fedora Project",
        family="linux",
        distro="fedora",
        version=str(version),
        release_date=released,
        derives_from=(f"http://fedoraproject.org/fedora/{version - 1}",),
        upgrades=(f"http://fedoraproject.org/fedora/{version - 1}",),
        media=media,
    )


def supplement_entries() -> list[OsEntry]:
    return [
        _debian(12, "bookworm", "2023-06-10"),
        _fedora(38, "2023-04-18"),
        _fedora(39, "2023-11-07"),
    ]
