"""Can QEMU read this file?  Asked before a VM starts, so the answer is a sentence, not QEMU's
raw "Permission denied" and a silent rollback.

libvirt runs QEMU as an unprivileged user (``user`` in /etc/libvirt/qemu.conf: libvirt-qemu on
Debian, qemu on RHEL).  With ``dynamic_ownership`` (the default) libvirt hands the image itself
to that user, but never the directories above it: an ISO in /root (0700) cannot be opened
whatever its own mode.  Only a local daemon's files can be checked; remote hosts use pools.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import stat
from dataclasses import dataclass
from pathlib import Path

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
_SETTING = re.compile(r'^\s*(user|group|dynamic_ownership)\s*=\s*"?([^"#\s]+)"?', re.MULTILINE)


@dataclass(frozen=True)
class QemuIdentity:
    uid: int
    gids: frozenset[int]
    name: str
    dynamic_ownership: bool


def qemu_identity(conf: Path = QEMU_CONF) -> QemuIdentity | None:
    """Who QEMU runs as for the system daemon; None when that user does not exist here."""
    try:
        text = conf.read_text()
    except OSError:
        text = ""
    settings = dict(_SETTING.findall(text))
    candidates = [settings["user"]] if "user" in settings else ["libvirt-qemu", "qemu"]
    for name in candidates:
        try:
            user = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
        except KeyError:
            continue
        gids = {user.pw_gid, *(g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem)}
        if "group" in settings:
            with contextlib.suppress(KeyError):
                gids.add(grp.getgrnam(settings["group"]).gr_gid)
        dynamic = settings.get("dynamic_ownership", "1") != "0"
        return QemuIdentity(user.pw_uid, frozenset(gids), user.pw_name, dynamic)
    return None


def _allows(info: os.stat_result, who: QemuIdentity, bits: tuple[int, int, int]) -> bool:
    owner, group, other = bits
    if who.uid == 0:
        return True
    if info.st_uid == who.uid:
        return bool(info.st_mode & owner)
    if info.st_gid in who.gids:
        return bool(info.st_mode & group)
    return bool(info.st_mode & other)


def why_qemu_cannot_read(path: str, who: QemuIdentity | None = None) -> str | None:
    """None when QEMU can open ``path`` for reading, else what stops it (one sentence)."""
    who = who or qemu_identity()
    if who is None:
        return None  # no such user here: nothing to check against
    resolved = Path(path).resolve()
    for directory in reversed(resolved.parents):
        try:
            info = directory.stat()
        except OSError:
            return None  # cannot tell; libvirt will say
        if not _allows(info, who, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)):
            mode = stat.filemode(info.st_mode)
            return f"{who.name} cannot enter {directory} ({mode})"
    if who.dynamic_ownership:
        return None  # libvirt gives the file itself to QEMU's user while the VM runs
    try:
        info = resolved.stat()
    except OSError:
        return None
    if not _allows(info, who, (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)):
        return f"{who.name} cannot read {resolved} ({stat.filemode(info.st_mode)})"
    return None
