"""Who owns each object kvmgr manages, by user *id*, and the ids of deleted users.

One table for every kind (VM, volume, network, pool, snapshot, backup, template, ISO), keyed by
(kind, host, key): a VM by its libvirt UUID (a rename keeps its owner), a volume by its resolved
host path, a network or pool by its name, a snapshot by "<VM uuid>/<snapshot>", a backup by the
id the backups module gives it.  A template is a VM: its row is the VM's.

Users are never matched by name.  A deleted user leaves a tombstone row with their id, and new
users get ids above every live and deleted one, so a new user given a deleted user's name (or,
on SQLite, the freed highest id) owns nothing of theirs: the objects stay owned by the tombstone
id, which only admins act on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sqlalchemy import Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from kvmgr.store.models import Base, Role, User, utcnow

#: The kinds of object ownership is recorded for.
KINDS = ("vm", "volume", "network", "pool", "snapshot", "backup", "template", "iso", "image")
#: The host of objects on the default connection until hosts are registered by name.
LOCAL_HOST = "local"


class ObjectOwner(Base):
    """The owner (a user id, or none: admins only) and group of one object."""

    __tablename__ = "object_owners"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    host: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    # No foreign key: a deleted user's id stays here as a tombstone (see UserTombstone).
    owner_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    group: Mapped[str | None] = mapped_column(String(64), default=None)
    label: Mapped[str] = mapped_column(String(200), default="")  # e.g. the VM's name, for lists
    creator: Mapped[str] = mapped_column(String(64), default="")  # "cli:root", "op1": shown only
    created: Mapped[datetime] = mapped_column(default=utcnow)


class UserTombstone(Base):
    """A deleted user's id (never given out again) and name (for display only)."""

    __tablename__ = "user_tombstones"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(64))
    deleted: Mapped[datetime] = mapped_column(default=utcnow)


class Who(Protocol):
    """The facts the ownership rule needs (kvmgr.store.users.Principal has them)."""

    @property
    def id(self) -> int: ...
    @property
    def role(self) -> Role: ...
    @property
    def group(self) -> str | None: ...


class Owned(Protocol):
    """What the rule reads of an ownership record (ObjectOwner, or a detached copy of it)."""

    @property
    def owner_id(self) -> int | None: ...
    @property
    def group(self) -> str | None: ...


# ------------------------------------------------------------------ user ids
def next_user_id(session: Session) -> int:
    """An id above every live and deleted user's: ids are never reused."""
    live = session.scalar(select(func.max(User.id))) or 0
    dead = session.scalar(select(func.max(UserTombstone.id))) or 0
    return max(live, dead) + 1


def bury(session: Session, user: User) -> None:
    """Record ``user``'s id as a tombstone before the row goes."""
    session.add(UserTombstone(id=user.id, name=user.name))


def owner_names(session: Session) -> dict[int, str]:
    """User id -> name for display: live users by name, deleted ones as "(deleted) NAME"."""
    names = {row.id: f"(deleted) {row.name}" for row in session.scalars(select(UserTombstone))}
    names.update({user.id: user.name for user in session.scalars(select(User))})
    return names


# ------------------------------------------------------------------ records
def record(
    session: Session,
    kind: str,
    key: str,
    owner_id: int | None,
    group: str | None,
    *,
    host: str = LOCAL_HOST,
    label: str = "",
    creator: str = "",
) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown object kind {kind!r}")  # a programming error, not input
    session.merge(
        ObjectOwner(
            kind=kind,
            host=host,
            key=key,
            owner_id=owner_id,
            group=group,
            label=label[:200],
            creator=creator[:64],
        )
    )


def get(session: Session, kind: str, key: str, host: str = LOCAL_HOST) -> ObjectOwner | None:
    return session.get(ObjectOwner, (kind, host, key))


def of_kind(session: Session, kind: str, host: str = LOCAL_HOST) -> dict[str, ObjectOwner]:
    rows = session.scalars(
        select(ObjectOwner).where(ObjectOwner.kind == kind, ObjectOwner.host == host)
    )
    return {row.key: row for row in rows}


def forget(session: Session, kind: str, key: str, host: str = LOCAL_HOST) -> None:
    session.execute(
        delete(ObjectOwner).where(
            ObjectOwner.kind == kind, ObjectOwner.host == host, ObjectOwner.key == key
        )
    )


def forget_prefix(session: Session, kind: str, prefix: str, host: str = LOCAL_HOST) -> None:
    """Every record of ``kind`` whose key starts with ``prefix`` (a VM's snapshots)."""
    session.execute(
        delete(ObjectOwner).where(
            ObjectOwner.kind == kind,
            ObjectOwner.host == host,
            ObjectOwner.key.startswith(prefix, autoescape=True),
        )
    )


def may_act(who: Who, row: Owned | None) -> bool:
    """Admins act on everything; operators on what they own, or what their group owns; viewers
    on nothing.  An object without a record (made by an admin or outside kvmgr) is the admins'.
    """
    if who.role.at_least(Role.admin):
        return True
    if not who.role.at_least(Role.operator) or row is None:
        return False
    if row.owner_id is not None and row.owner_id == who.id:
        return True
    return who.group is not None and row.group == who.group
