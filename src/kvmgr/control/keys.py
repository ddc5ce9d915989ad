"""A lease key, apart from the control plane so commands that only name objects (and list them)
import no database code: SQLAlchemy costs about a second of a CLI command's start."""

from __future__ import annotations

from typing import NamedTuple


class Key(NamedTuple):
    """A lease key and how to name its object in messages ("VM web1")."""

    key: str
    what: str


__all__ = ["Key"]
