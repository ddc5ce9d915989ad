"""/etc/os-release, parsed as the os-release(5) format defines it (shell-like assignments)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from kvmgr.errors import HostError

OS_RELEASE_PATHS = (Path("/etc/os-release"), Path("/usr/lib/os-release"))


@dataclass(frozen=True)
class OsRelease:
    """The fields kvmgr decides on: ``id`` (``debian``), ``id_like``, ``version_id``."""

    id: str
    version_id: str = ""
    id_like: tuple[str, ...] = ()
    pretty_name: str = ""

    @property
    def major(self) -> int | None:
        """The major release (``9`` for ``9.3``), or None for rolling releases."""
        head = self.version_id.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def is_like(self, *ids: str) -> bool:
        return self.id in ids or any(like in ids for like in self.id_like)


def parse_os_release(text: str) -> OsRelease:
    """Parse the text of an os-release file (quotes and escapes as a shell would read them)."""
    values: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            words = shlex.split(raw)
        except ValueError:
            continue  # an unterminated quote: os-release(5) says to ignore such lines
        values[key.strip()] = words[0] if words else ""
    return OsRelease(
        id=values.get("ID", "linux").lower(),
        version_id=values.get("VERSION_ID", ""),
        id_like=tuple(values.get("ID_LIKE", "").lower().split()),
        pretty_name=values.get("PRETTY_NAME", ""),
    )


def read_os_release(paths: tuple[Path, ...] = OS_RELEASE_PATHS) -> OsRelease:
    """This host's os-release (the first of /etc/os-release, /usr/lib/os-release that exists)."""
    for path in paths:
        try:
            return parse_os_release(path.read_text())
        except FileNotFoundError:
            continue
    raise HostError(
        "cannot detect the distribution: no /etc/os-release",
        hint="kvmgr host setup supports Debian, Ubuntu, CentOS 7 and EL 8/9 (Rocky, Alma, RHEL)",
    )
