"""Recording and reading who owns an object: the calls faces and control-plane modules use.

Owners are user ids (see kvmgr.store.ownership).  A principal that is no user of the database
(the CLI's ``cli:<unix user>``, id 0) owns nothing: what it makes has no owner id and is the
admins', but its name is kept as the creator for display.  Keys, per kind: ``vm`` and ``template``
the libvirt UUID, ``volume`` the resolved path, ``network`` and ``pool`` the name, ``snapshot``
"<VM uuid>/<name>", ``backup`` the backup's id, ``iso`` the volume name in the ISO library.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kvmgr.store import ownership
from kvmgr.store.db import Store
from kvmgr.store.ownership import KINDS, LOCAL_HOST, ObjectOwner
from kvmgr.store.users import Principal

__all__ = [
    "KINDS",
    "LOCAL_HOST",
    "Owner",
    "forget_owner",
    "may_act",
    "owner_of",
    "owners_of_kind",
    "record_owner",
]


@dataclass(frozen=True)
class Owner:
    """Who owns one object, for answers: ``owner`` is a user's name, "(deleted) NAME" for a
    deleted user, or None for an admins' object (then ``creator`` says who made it)."""

    owner_id: int | None
    owner: str | None
    group: str | None
    creator: str


def record_owner(
    store: Store,
    kind: str,
    key: str,
    principal: Principal,
    *,
    host: str = LOCAL_HOST,
    label: str = "",
    group: str | None = None,
) -> None:
    """``principal`` owns ``kind``/``key`` now, with its group (or ``group`` when given)."""
    owner_id = principal.id if principal.id > 0 else None
    with store.session() as session:
        ownership.record(
            session,
            kind,
            key,
            owner_id,
            group if group is not None else principal.group,
            host=host,
            label=label,
            creator=principal.name,
        )


def record_owners(
    store: Store, kind: str, keys: Iterable[str], principal: Principal, *, host: str = LOCAL_HOST
) -> None:
    for key in keys:
        record_owner(store, kind, key, principal, host=host)


def forget_owner(store: Store, kind: str, key: str, *, host: str = LOCAL_HOST) -> None:
    with store.session() as session:
        ownership.forget(session, kind, key, host)
        if kind == "vm":  # a VM's snapshots go with it
            ownership.forget_prefix(session, "snapshot", f"{key}/", host)


def _owner(row: ObjectOwner, names: dict[int, str]) -> Owner:
    name = names.get(row.owner_id) if row.owner_id is not None else None
    return Owner(row.owner_id, name, row.group, row.creator)


def owner_of(store: Store, kind: str, key: str, *, host: str = LOCAL_HOST) -> Owner | None:
    with store.session() as session:
        row = ownership.get(session, kind, key, host)
        return _owner(row, ownership.owner_names(session)) if row is not None else None


def owners_of_kind(store: Store, kind: str, *, host: str = LOCAL_HOST) -> dict[str, Owner]:
    """Key -> owner of every recorded object of ``kind`` (one query each, for lists)."""
    with store.session() as session:
        names = ownership.owner_names(session)
        return {
            key: _owner(row, names) for key, row in ownership.of_kind(session, kind, host).items()
        }


def may_act(
    store: Store, principal: Principal, kind: str, key: str, *, host: str = LOCAL_HOST
) -> bool:
    """The ownership rule (kvmgr.store.ownership.may_act) for one object."""
    with store.session() as session:
        return ownership.may_act(principal, ownership.get(session, kind, key, host))


def may_act_given(principal: Principal, owner: Owner | None) -> bool:
    """The same rule for an :class:`Owner` already read (lists read them all at once)."""
    return ownership.may_act(principal, owner)
