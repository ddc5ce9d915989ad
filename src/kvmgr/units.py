"""Sizes as people type them (``512M``, ``2G``, ``20GiB``, ``1.5T``) and as libvirt wants them.

kvmgr follows virt-install and qemu-img: a bare suffix is binary (``2G`` is 2 GiB).  ``GB``
with a B is decimal, as libvirt's own ``unit='GB'`` is.
"""

from __future__ import annotations

import re
from fractions import Fraction

from kvmgr.errors import InvalidInput

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4
PIB = 1024**5
EIB = 1024**6
#: Largest size accepted: libvirt keeps sizes in 64-bit integers (and KiB for memory), and
#: larger numbers come back from it as "malformed capacity element".
MAX_SIZE = EIB

#: Every unit libvirt accepts in a ``unit`` attribute (lower-cased), in bytes.  A bare letter is
#: binary, ``KB``/``MB``/... decimal, ``KiB``/``MiB``/... binary; ``b`` and ``bytes`` are bytes.
LIBVIRT_UNITS = {
    "b": 1, "bytes": 1,
    "k": KIB, "kib": KIB, "kb": 1000,
    "m": MIB, "mib": MIB, "mb": 1000**2,
    "g": GIB, "gib": GIB, "gb": 1000**3,
    "t": TIB, "tib": TIB, "tb": 1000**4,
    "p": PIB, "pib": PIB, "pb": 1000**5,
    "e": EIB, "eib": EIB, "eb": 1000**6,
}  # fmt: skip

#: The same units as libvirt spells them, for error messages.
LIBVIRT_UNIT_NAMES = (
    "b, bytes, k, KiB, KB, M, MiB, MB, G, GiB, GB, T, TiB, TB, P, PiB, PB, E, EiB, EB"
)

# Sizes typed by people: libvirt's units, plus a bare number (bytes).
_MULTIPLIERS = {"": 1, **LIBVIRT_UNITS}


def unit_bytes(unit: str | None, *, what: str = "size", default: str = "KiB") -> int:
    """Bytes in one ``unit`` as a libvirt ``unit`` attribute spells it (none is ``default``).

    Raises :class:`InvalidInput` naming ``what`` and listing the accepted units for any other.
    """
    name = unit if unit and unit.strip() else default  # libvirt: absent or empty is the default
    try:
        return LIBVIRT_UNITS[name.strip().lower()]
    except KeyError:
        raise InvalidInput(
            f"{what} has an unknown unit {name!r}", hint=f"units are {LIBVIRT_UNIT_NAMES}"
        ) from None


def parse_xml_size(
    text: str | None, unit: str | None, *, what: str = "size", default: str = "KiB"
) -> int:
    """A libvirt size element (``<memory unit='GiB'>4</memory>``) in bytes.

    Raises :class:`InvalidInput` for a unit libvirt does not know or a value that is not a
    whole non-negative number, never ``KeyError``/``ValueError``.
    """
    multiplier = unit_bytes(unit, what=what, default=default)
    value = (text or "").strip()
    if not value.isdecimal() or not value.isascii():
        raise InvalidInput(f"{what} {value!r} is not a whole number", hint="e.g. 4194304")
    return int(value) * multiplier


_SIZE_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[a-zA-Z]*)\s*$")


def parse_size(text: str | int, *, what: str = "size", default_unit: str = "") -> int:
    """Parse a size into bytes; a bare number is bytes unless ``default_unit`` says otherwise.

    Raises :class:`InvalidInput` naming ``what`` and the accepted forms for anything else,
    including zero and negative sizes.
    """
    if isinstance(text, int):
        value = text * (unit_bytes(default_unit, what=what) if default_unit else 1)
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
            hint=f"units are {LIBVIRT_UNIT_NAMES}",
        )
    # Fraction, not float: a long number must not become inf (OverflowError) or lose digits.
    value = int(Fraction(match["num"]) * _MULTIPLIERS[unit])
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
