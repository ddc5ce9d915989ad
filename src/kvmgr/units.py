"""Sizes as people type them (``512M``, ``2G``, ``20GiB``, ``1.5T``) and as libvirt wants them.

kvmgr follows virt-install and qemu-img: a bare suffix is binary (``2G`` is 2 GiB).  ``GB``
with a B is decimal, as libvirt's own ``unit='GB'`` is.
"""

from __future__ import annotations

import re

from kvmgr.errors import InvalidInput

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4
#: Largest size accepted: libvirt keeps sizes in 64-bit integers (and KiB for memory), and
#: larger numbers come back from it as "malformed capacity element".
MAX_SIZE = 1024**6

_MULTIPLIERS = {
    "": 1,
    "b": 1,
    "k": KIB, "kib": KIB, "kb": 1000,
    "m": MIB, "mib": MIB, "mb": 1000**2,
    "g": GIB, "gib": GIB, "gb": 1000**3,
    "t": TIB, "tib": TIB, "tb": 1000**4,
}  # fmt: skip

_SIZE_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[a-zA-Z]*)\s*$")


def parse_size(text: str | int, *, what: str = "size", default_unit: str = "") -> int:
    """Parse a size into bytes; a bare number is bytes unless ``default_unit`` says otherwise.

    Raises :class:`InvalidInput` naming ``what`` and the accepted forms for anything else,
    including zero and negative sizes.
    """
    if isinstance(text, int):
        value = text * _MULTIPLIERS[default_unit.lower()]
        if value <= 0:
            raise InvalidInput(f"{what} must be greater than zero, got {text}")
        return value
    match = _SIZE_RE.match(text)
    if not match:
        raise InvalidInput(
            f"{what} {text!r} is not a size",
            hint="use a number with an optional unit, e.g. 512M, 2G, 20GiB",
        )
    unit = (match["unit"] or default_unit).lower()
    if unit not in _MULTIPLIERS:
        raise InvalidInput(
            f"{what} {text!r} has an unknown unit {match['unit']!r}",
            hint="units are K, M, G, T (binary) or KB, MB, GB, TB (decimal)",
        )
    value = int(float(match["num"]) * _MULTIPLIERS[unit])
    if value <= 0:
        raise InvalidInput(f"{what} must be greater than zero, got {text!r}")
    if value > MAX_SIZE:
        raise InvalidInput(f"{what} {text!r} is too large", hint="give at most 1048576T (1 EiB)")
    return value


def format_size(num_bytes: int | float) -> str:
    """Human form with a binary unit, e.g. ``1.5 GiB``; exact values drop the decimals."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B" or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def to_kib(num_bytes: int) -> int:
    """Bytes to KiB, the unit libvirt uses for memory (rounded up so nothing shrinks)."""
    return -(-num_bytes // KIB)
