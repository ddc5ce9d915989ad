"""Clip text to the length of the column it is written to.

SQLite ignores ``String(n)`` lengths, PostgreSQL rejects an overlong value, so a long VM name in
a denied request would turn the audit write (and the answer) into a 500.  The store's write
functions pass every bounded string through :func:`clip`; the length comes from the model.
"""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase

ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"


def column_length(model: type[DeclarativeBase], column: str) -> int | None:
    """The declared length of ``model.column`` (None for unbounded types such as Text)."""
    length = getattr(model.__table__.c[column].type, "length", None)
    return length if isinstance(length, int) else None


def clip(model: type[DeclarativeBase], column: str, value: str) -> str:
    """``value`` cut to fit ``model.column``, its last character an ellipsis if it was cut."""
    length = column_length(model, column)
    if length is None or len(value) <= length:
        return value
    return value[: length - 1] + ELLIPSIS
