"""Can libvirt's swtpm give a new TPM its certificates?

A new emulated TPM (a Windows 11 VM's first start) is "manufactured" by ``swtpm_setup``, which
libvirt runs as ``swtpm_user`` (qemu.conf; ``tss`` by default) and which has its EK and platform
certificates signed by a local CA kept in swtpm-localca's state directory (/var/lib/swtpm-localca,
owned by ``tss``).  A libvirtd that started before the swtpm packages created the ``tss`` user
falls back to running swtpm as root, and the CA files it makes then are root's.  Every daemon
started after that runs swtpm as ``tss``, which cannot take the CA's lock: each new TPM fails
with libvirt's bare "Could not run '/usr/bin/swtpm_setup'".  This module finds such files;
``kvmgr host check`` reports them and ``kvmgr host setup`` gives them back.
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
LOCALCA_CONF = Path("/etc/swtpm-localca.conf")
DEFAULT_STATEDIR = Path("/var/lib/swtpm-localca")
DEFAULT_SWTPM_USER = "tss"  # libvirt's default, and the owner Debian's and Fedora's packages use
_SWTPM_USER = re.compile(r'^\s*swtpm_user\s*=\s*"([^"]+)"', re.MULTILINE)
_STATEDIR = re.compile(r"^\s*statedir\s*=\s*(\S+)", re.MULTILINE)


@dataclass(frozen=True)
class ForeignCAFiles:
    """CA files that the user libvirt runs swtpm as does not own."""

    statedir: Path
    user: str
    files: tuple[tuple[Path, str], ...]  # (path, its owner)

    @property
    def summary(self) -> str:
        shown = ", ".join(f"{path.name} ({owner})" for path, owner in self.files[:4])
        more = f" and {len(self.files) - 4} more" if len(self.files) > 4 else ""
        return (
            f"swtpm's local CA in {self.statedir} has files {self.user} does not own: "
            f"{shown}{more}; libvirt runs swtpm as {self.user}, so no new TPM (Windows 11) "
            "can get its certificates"
        )

    @property
    def fix_argv(self) -> tuple[str, ...]:
        """The owner only: the package keeps the directory's group (root) and mode (0750)."""
        return ("chown", "-R", self.user, str(self.statedir))


def swtpm_user(conf: Path = QEMU_CONF) -> str:
    """The user libvirt runs swtpm as: ``swtpm_user`` in qemu.conf, else ``tss``."""
    try:
        text = conf.read_text()
    except OSError:
        text = ""
    found = _SWTPM_USER.search(text)
    return found.group(1) if found else DEFAULT_SWTPM_USER


def localca_statedir(conf: Path = LOCALCA_CONF) -> Path:
    """Where swtpm_localca keeps its CA: ``statedir`` in swtpm-localca.conf."""
    try:
        found = _STATEDIR.search(conf.read_text())
    except OSError:
        found = None
    return Path(found.group(1)) if found else DEFAULT_STATEDIR


def foreign_ca_files(
    qemu_conf: Path = QEMU_CONF, localca_conf: Path = LOCALCA_CONF
) -> ForeignCAFiles | None:
    """The CA's files (and directory) that swtpm's user does not own; None when all is well,
    when swtpm is not installed here, or when that user does not exist (libvirt then runs
    swtpm as root, which can use anything)."""
    statedir = localca_statedir(localca_conf)
    user = swtpm_user(qemu_conf)
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return None
    if uid == 0 or not statedir.is_dir():
        return None
    foreign = []
    for path in [statedir, *sorted(statedir.iterdir())]:
        owner = os.lstat(path).st_uid
        if owner != uid:
            foreign.append((path, _user_name(owner)))
    return ForeignCAFiles(statedir, user, tuple(foreign)) if foreign else None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
