"""Giving freed memory back to the OS after big answers.

glibc keeps what Python frees in its heaps for reuse, and each thread of the pool that runs sync
routes has a heap of its own, so one ``GET /api/v1/vms`` over 5,000 VMs (libvirt's stats
records, the rows, the JSON) left tens of MB resident for good.  ``malloc_trim(0)`` returns the
free pages of every heap; it is called only after answers that were big enough to matter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Answers at least this big are followed by a trim (~a 1,000-VM inventory; 100 VMs are ~30 KB).
TRIM_AFTER_BYTES = 256 * 1024


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    return trim


_trim = _load_trim()


def release_free_memory() -> None:
    """Return the allocator's free pages to the OS (a no-op where libc has no malloc_trim)."""
    if _trim is not None:
        _trim(0)


def after_big_answer(size: int) -> None:
    if size >= TRIM_AFTER_BYTES:
        release_free_memory()
