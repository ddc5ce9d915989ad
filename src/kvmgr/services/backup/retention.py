"""Which backup points a retention policy keeps: the newest N, one a day for D days, one a week
for W weeks (the newest point of each day or ISO week that has one).

Deleting a point never breaks another (every point maps its whole disk, and packs stay while
any kept point maps them, see :mod:`.repository`), so the policy needs no chain rule of its own;
the VM's newest point is always kept, since its checkpoint is what the next incremental builds on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kvmgr.errors import InvalidInput


@dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0

    def __post_init__(self) -> None:
        if min(self.keep_last, self.keep_daily, self.keep_weekly) < 0:
            raise InvalidInput("retention counts cannot be negative", hint="use 0 or more")
        if self.keep_last + self.keep_daily + self.keep_weekly == 0:
            raise InvalidInput(
                "a policy that keeps nothing would delete every point",
                hint="give --keep-last, --keep-daily or --keep-weekly",
            )


def keep(points: list[tuple[str, datetime]], policy: Policy) -> set[str]:
    """The ids of ``points`` (id, creation time) that ``policy`` keeps."""
    newest_first = sorted(points, key=lambda point: point[1], reverse=True)
    kept: set[str] = {point for point, _ in newest_first[: max(policy.keep_last, 1)]}
    for count, bucket in (
        (policy.keep_daily, lambda when: when.date().isoformat()),
        (policy.keep_weekly, lambda when: "{}-W{:02d}".format(*when.isocalendar()[:2])),
    ):
        seen: list[str] = []
        for point, when in newest_first:
            key = bucket(when)
            if key in seen:
                continue
            if len(seen) == count:
                break
            seen.append(key)
            kept.add(point)
    return kept
