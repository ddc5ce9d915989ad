"""Uses: the shared side of an object's lease, held by operations that build on the object.

A VM create names a network, a pool, volumes.  Holding their (exclusive) leases for the whole
create would make two creates on one network wait for each other for minutes; holding none lets
a ``net delete`` from another process remove the network between the create's check and its
define.  So an object's lease has a shared side:

* a **use** is a lease row of its own, ``"<key> use <uuid>"``: a fresh key nobody else takes,
  so any number of operations use one object side by side, each renewing and releasing its own
  row like any lease (a dead user's row falls free the same way);
* a **sole** holder (a delete) takes the object's lease as usual, then the row
  ``"<key> sole"``, then looks for live uses, and is refused (``Busy``, naming the operation
  that uses it) while there is one;
* a use, once its row is committed, looks for a live ``sole`` row and backs off if there is one.

Each side commits its own row *before* it reads the other's, so whichever reads second sees the
first: a delete and a use can never both go ahead (at worst both back off once and retry).  No
new table, no lock held across statements, and the usual lease (start, stop, reserve of a
network) does not conflict with a use at all: only what removes the object is sole.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from typing import Any

from sqlalchemy import Table, delete, select

from kvmgr.control.leases import POLL_SECONDS, LeaseInfo, Leases
from kvmgr.control.models import Lease
from kvmgr.errors import Busy

_LEASES: Table = Lease.__table__  # type: ignore[assignment]
#: Object names never hold a space (kvmgr.names), so these suffixes cannot name another object.
USE = " use "
SOLE = " sole"
#: Room left in the 200-character key column for the suffixes.
_ROOM = 150


def base(key: str) -> str:
    """The prefix of ``key``'s use and sole rows (a digest for a very long key)."""
    if len(key) <= _ROOM:
        return key
    return "h:" + hashlib.sha256(key.encode()).hexdigest()


class Uses:
    """Uses and sole holds over the leases of ``leases``."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases

    def take(
        self,
        key: str,
        operation: str,
        *,
        actor: str,
        what: str,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Use ``key`` (returns the use row's key, to :meth:`Leases.drop`); refused with
        :class:`Busy` while someone deletes the object."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            row = f"{base(key)}{USE}{uuid.uuid4().hex}"
            with self.leases.lax_transaction() as connection:
                info = self.leases.insert(connection, row, operation, actor)
            self.leases.adopt(info)
            blockers = self._live(base(key) + SOLE, exact=True)
            if not blockers:
                return row
            self.leases.drop([row])
            _refuse_or_sleep(what, "busy", blockers, wait, deadline)

    def claim_sole(
        self,
        key: str,
        operation: str,
        *,
        actor: str,
        what: str,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str:
        """For a caller holding ``key``'s lease: refuse new uses, and wait (or be refused) until
        none is left.  Returns the sole row's key, to :meth:`Leases.drop`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        row = base(key) + SOLE
        # Nobody else competes for this row (they would need ``key``, which the caller holds)
        # but a dead holder's leftover, which take() takes over.
        self.leases.take(row, operation, actor=actor, what=what, wait=True, timeout=timeout)
        try:
            while True:
                users = self._live(base(key) + USE, exact=False)
                if not users:
                    return row
                # The sole row stays while waiting: new uses are refused, so the wait ends.
                _refuse_or_sleep(what, "in use", users, wait, deadline)
        except BaseException:
            self.leases.drop([row])
            raise

    def users(self, key: str) -> list[LeaseInfo]:
        """The live uses of ``key`` (``net info`` shows them)."""
        return self._live(base(key) + USE, exact=False)

    def _live(self, prefix: str, *, exact: bool) -> list[LeaseInfo]:
        """Live rows of ``prefix`` (the row itself with ``exact``, else every row under it);
        dead ones found on the way are removed."""
        c = _LEASES.c
        where = c.key == prefix if exact else c.key.startswith(prefix, autoescape=True)
        with self.leases.lax_transaction() as connection:
            rows = connection.execute(select(_LEASES).where(where)).all()
            infos = [_info(row) for row in rows]
            dead = [info for info in infos if self.leases.free(info)]
            for info in dead:
                connection.execute(
                    delete(_LEASES).where(c.key == info.key, c.holder == info.holder)
                )
        return [info for info in infos if info not in dead]


def _refuse_or_sleep(
    what: str, state: str, holders: list[LeaseInfo], wait: bool, deadline: float | None
) -> None:
    if not wait or (deadline is not None and time.monotonic() >= deadline):
        more = f" (and {len(holders) - 1} more)" if len(holders) > 1 else ""
        raise Busy(
            f"{what} is {state}: {holders[0].describe()}{more}",
            hint="wait until that operation ends and try again",
        )
    # Jitter: a use and a delete that backed off together do not meet again in step.
    time.sleep(POLL_SECONDS * (1 + random.random()))  # noqa: S311 - timing, not secrets


def _info(row: Any) -> LeaseInfo:
    return LeaseInfo(row.key, row.holder, row.operation, row.actor, row.acquired, row.expires)


__all__ = ["SOLE", "USE", "Uses", "base"]
