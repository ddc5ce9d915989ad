"""When a backup schedule's windows are: intervals, times of day and time zones.

Without a zone, windows are the instants ``at + k * every`` in UTC counted from the Unix epoch,
so every worker computes the same windows from the schedule row alone.  With a zone (``--tz
Europe/Paris``, an IANA name read through :mod:`zoneinfo`), a whole-day schedule's windows are
the wall-clock time ``at`` in that zone on every ``every``-th local day counted from
1970-01-01, which is the same rule read on the local calendar; the row's zone name is all a
worker needs, so workers still agree.  Daylight saving time:

* a wall time the spring change skips (02:30 on the night clocks go from 02:00 to 03:00) runs
  at the first valid instant after it, the end of the gap (03:00);
* a wall time the autumn change repeats (02:30 twice) runs once, at its first occurrence
  (``fold=0``): a day has one window.

Intervals shorter than a day are elapsed time and know no zone, so ``--tz`` needs whole days.
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as clock
from functools import lru_cache

from kvmgr.errors import InvalidInput

#: Shortest interval: a backup of even a tiny VM takes seconds, and the workers look every 5 s.
MIN_EVERY = 10
MAX_EVERY = 366 * 86400
DAY = 86400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1).toordinal()


def parse_every(text: str) -> int:
    """``30s`` ``15m`` ``6h`` ``1d`` ``1w`` (or a sum such as ``1d12h``) -> seconds."""
    found = re.fullmatch(r"((\d+)([smhdw]))+", text.strip().lower())
    if not found:
        raise InvalidInput(
            f"--every {text!r} is not an interval",
            hint="a number and a unit: 30m, 6h, 1d, 1w (s, m, h, d, w; e.g. 1d12h)",
        )
    seconds = sum(
        int(number) * _UNITS[unit] for number, unit in re.findall(r"(\d+)([smhdw])", text.lower())
    )
    if not MIN_EVERY <= seconds <= MAX_EVERY:
        raise InvalidInput(
            f"--every {text} is {seconds} s",
            hint=f"use between {MIN_EVERY}s and 366d",
        )
    return seconds


def parse_at(text: str) -> int:
    """``HH:MM`` (UTC, or the schedule's zone) -> seconds after midnight."""
    found = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not found or int(found[1]) > 23 or int(found[2]) > 59:
        raise InvalidInput(
            f"--at {text!r} is not a time of day",
            hint="HH:MM, e.g. 02:00 (UTC, or the zone of --tz)",
        )
    return int(found[1]) * 3600 + int(found[2]) * 60


def parse_tz(text: str) -> str:
    """An IANA time zone name (``Europe/Paris``) that this machine's zone database knows."""
    name = text.strip()
    try:
        zone(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, sorted(zoneinfo.available_timezones()), n=3)
        raise InvalidInput(
            f"--tz {text!r} is not a time zone",
            hint="an IANA zone name such as Europe/Paris, America/New_York or UTC"
            + (f" (did you mean {', '.join(close)}?)" if close else ""),
        ) from None
    return name


@lru_cache(maxsize=64)
def zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def zone_of(name: str | None) -> tzinfo:
    """The zone of a schedule row (None: UTC)."""
    return UTC if name is None else zone(name)


def check_window(every: int, at: int | None, tz: str | None = None) -> None:
    if at is not None and every % DAY:
        raise InvalidInput(
            "--at needs an --every of whole days",
            hint="e.g. --every 1d --at 02:00; for shorter intervals leave --at out",
        )
    if tz is not None and every % DAY:
        raise InvalidInput(
            "--tz needs an --every of whole days",
            hint="shorter intervals are elapsed time in any zone: leave --tz out",
        )


def due_window(every: int, at: int | None, now: datetime, tz: str | None = None) -> datetime:
    """The newest window at or before ``now`` (aware, UTC)."""
    if tz is None:
        offset = at or 0
        since = int((now - _EPOCH).total_seconds()) - offset
        return _EPOCH + timedelta(seconds=since - since % every + offset)
    return _local_window(_due_day(every, at, now, tz), at, tz)


def next_window(every: int, at: int | None, now: datetime, tz: str | None = None) -> datetime:
    """The first window after ``now``."""
    if tz is None:
        return due_window(every, at, now) + timedelta(seconds=every)
    due = _due_day(every, at, now, tz)
    return _local_window(due + timedelta(days=every // DAY), at, tz)


def _due_day(every: int, at: int | None, now: datetime, tz: str) -> date:
    """The local day of the newest window at or before ``now``."""
    days = every // DAY
    today = now.astimezone(zone(tz)).date()
    day = today - timedelta(days=(today.toordinal() - _EPOCH_DAY) % days)
    if _local_window(day, at, tz) > now:
        day -= timedelta(days=days)
    return day


def _local_window(day: date, at: int | None, tz: str) -> datetime:
    """The instant of wall time ``at`` on ``day`` in ``tz`` (see the module's DST rules)."""
    place = zone(tz)
    wall = datetime.combine(day, clock()) + timedelta(seconds=at or 0)
    first = wall.replace(tzinfo=place, fold=0).astimezone(UTC)
    if first.astimezone(place).replace(tzinfo=None) == wall:
        return first  # exists (and, when repeated, this is its first occurrence)
    # In a gap: fold=0 read it with the offset before the change, fold=1 with the one after;
    # the change itself lies between, at the first instant whose wall time is past ``wall``.
    low = wall.replace(tzinfo=place, fold=1).astimezone(UTC)
    low, high = min(low, first), max(low, first)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(place).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def format_every(seconds: int) -> str:
    for unit, size in (("w", 7 * DAY), ("d", DAY), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
