"""Events in the database: written by workers, read by every API replica, kept for a while.

Rows are read by id.  On PostgreSQL ids are handed out before commit, so a row with a smaller id
can become visible after a larger one: :class:`Cursor` therefore re-reads a window below the
highest id it saw and skips the ids it already delivered.

Who receives what (the rule of docs/SECURITY.md): admins every event; anyone else the events of
their own tasks (by user id) and the lifecycle events of VMs they or their group own.  Events of
VMs kvmgr did not make (no owner row) go to admins only.

Each write notifies :data:`kvmgr.control.notify.EVENTS` (PostgreSQL), so the API replicas' feeds
read at once instead of at their next poll; on SQLite they poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from kvmgr.control import notify
from kvmgr.control.event_models import Event
from kvmgr.control.ownership import LOCAL_HOST, Owner
from kvmgr.store.clip import clip
from kvmgr.store.models import Role, utcnow
from kvmgr.store.users import Principal

#: How long event rows are kept: long enough for a replica that paused to catch up.
RETENTION = timedelta(minutes=15)
#: How far below its highest id a cursor re-reads (rows of transactions still open then).
REREAD_WINDOW = 500


def record_task(session: Session, task: dict[str, Any]) -> None:
    session.add(
        Event(
            at=utcnow(),
            type="task",
            host=task.get("host"),
            owner_id=task.get("owner_id"),
            data={"type": "task", "task": task},
        )
    )
    notify.notify(session, notify.EVENTS)


def record_vm(session: Session, host: str, uuid: str, data: dict[str, Any]) -> None:
    session.add(
        Event(
            at=utcnow(),
            type="vm",
            host=clip(Event, "host", host),
            uuid=uuid,
            data={"type": "vm", "host": host, "uuid": uuid, **data},
        )
    )
    notify.notify(session, notify.EVENTS)


def record_host(session: Session, host: str, data: dict[str, Any]) -> None:
    """A fact about a host's event connection ("connected" after a (re)subscription)."""
    session.add(
        Event(at=utcnow(), type="host", host=clip(Event, "host", host), data={**data, "host": host})
    )
    notify.notify(session, notify.EVENTS)


def prune(session: Session, keep: timedelta = RETENTION) -> int:
    result = session.execute(delete(Event).where(Event.at < utcnow() - keep))
    return int(getattr(result, "rowcount", 0) or 0)


def newest_id(session: Session) -> int:
    return int(session.scalar(select(func.max(Event.id))) or 0)


@dataclass
class Cursor:
    """Where a reader is in the events table; starts at the newest row (no history replay)."""

    last: int
    seen: set[int] = field(default_factory=set)

    @classmethod
    def at_newest(cls, session: Session) -> Cursor:
        """A cursor for a new reader: what is in the table now is history.  The rows of the
        re-read window below the newest id are marked seen here, or the first read would send
        them again (up to REREAD_WINDOW old events to a feed that just started)."""
        cursor = cls(last=newest_id(session))
        cursor.read(session)
        return cursor

    def read(self, session: Session) -> list[dict[str, Any]]:
        low = max(0, self.last - REREAD_WINDOW)
        rows = session.scalars(select(Event).where(Event.id > low).order_by(Event.id)).all()
        fresh = [row for row in rows if row.id not in self.seen and row.id > 0]
        for row in fresh:
            self.seen.add(row.id)
            self.last = max(self.last, row.id)
        self.seen = {seen for seen in self.seen if seen > self.last - REREAD_WINDOW}
        return [dict(row.data) for row in fresh]


#: host -> VM UUID -> owner: what :func:`may_receive` reads (kept fresh by the reader).
VMOwners = dict[str, dict[str, Owner]]


def may_receive(who: Principal, event: dict[str, Any], owners: VMOwners) -> bool:
    """Whether ``who``'s event stream carries ``event`` (as published: ``type`` plus fields)."""
    if who.at_least(Role.admin):
        return True
    kind = event.get("type")
    if kind == "task":
        owner_id = (event.get("task") or {}).get("owner_id")
        return owner_id is not None and owner_id == who.id
    if kind == "host":
        return True  # which hosts' events are live: hosts are every user's to read
    if kind == "stats":
        # The same rows as GET /api/v1/vms, which every viewer may read (the VM list's rule).
        return True
    if kind == "vm":
        host = str(event.get("host") or LOCAL_HOST)
        row = owners.get(host, {}).get(str(event.get("uuid") or ""))
        if row is None:
            return False  # the admins' VM (made by an admin or outside kvmgr)
        if row.owner_id is not None and row.owner_id == who.id:
            return True
        return who.group is not None and row.group == who.group
    return False
