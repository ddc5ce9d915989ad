"""A reproducible initramfs: cpio "newc" archive written in Python, gzip-compressed.

Writing the archive ourselves (instead of running ``cpio`` over a staging tree) means device nodes
such as /dev/console need no root, every entry gets the same owner and time, and two builds from
the same inputs are byte-identical.
"""

from __future__ import annotations

import gzip
import io
import stat
from dataclasses import dataclass

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member; ``data`` is the file content or a symlink's target."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def regular(path: str, data: bytes, *, executable: bool = False) -> Entry:
    return Entry(path, stat.S_IFREG | (0o755 if executable else 0o644), data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def char_device(path: str, major: int, minor: int) -> Entry:
    return Entry(path, stat.S_IFCHR | 0o600, rdev=(major, minor))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _member(out: io.BytesIO, inode: int, entry: Entry) -> None:
    name = entry.path.lstrip("/").encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        inode, entry.mode, 0, 0, nlink, 0, len(entry.data),
        0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
    )  # fmt: skip
    header = _MAGIC + b"".join(b"%08x" % value for value in fields)
    out.write(header + name + _pad(len(header) + len(name)))
    out.write(entry.data + _pad(len(entry.data)))


def cpio_newc(entries: list[Entry]) -> bytes:
    """The uncompressed archive; parents must come before their children."""
    out = io.BytesIO()
    for inode, entry in enumerate(entries, start=1):
        _member(out, inode, entry)
    _member(out, 0, Entry(_TRAILER, 0))
    return out.getvalue()


def gzipped_cpio(entries: list[Entry]) -> bytes:
    # mtime=0 keeps the gzip header free of the build time, for reproducible images.
    return gzip.compress(cpio_newc(entries), compresslevel=9, mtime=0)
