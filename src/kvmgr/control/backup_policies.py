"""Stored retention policies: ``kvmgr backup policy VM --keep-last N --keep-daily D
--keep-weekly W``, applied by :meth:`kvmgr.control.backups.Backups.create` after every backup of
the VM (scheduled or by hand) through the same prune as ``kvmgr backup prune``.

A policy belongs to a VM name, like the catalog's points (a VM deleted and restored under its
name keeps its policy).  It needs no chain rule: the prune never breaks a chain a kept point
needs (kvmgr.services.backup.retention).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select

from kvmgr.control.backup_schedule_models import BackupPolicy
from kvmgr.errors import NotFound
from kvmgr.names import validate_name
from kvmgr.services.backup.retention import Policy
from kvmgr.store.clip import clip
from kvmgr.store.db import Store
from kvmgr.store.models import aware, utcnow


def set_policy(store: Store, vm: str, policy: Policy, *, by: str) -> dict[str, Any]:
    """Store (or replace) the policy of ``vm``; ``Policy`` has refused a keep-nothing one."""
    validate_name(vm, what="VM name")
    with store.session() as session:
        row = session.get(BackupPolicy, vm) or BackupPolicy(vm=vm)
        row.keep_last, row.keep_daily, row.keep_weekly = (
            policy.keep_last,
            policy.keep_daily,
            policy.keep_weekly,
        )
        row.updated, row.updated_by = utcnow(), clip(BackupPolicy, "updated_by", by)
        session.add(row)
        session.flush()
        return _dict(row)


def get_policy(store: Store, vm: str) -> Policy | None:
    with store.session() as session:
        row = session.get(BackupPolicy, vm)
        return None if row is None else Policy(row.keep_last, row.keep_daily, row.keep_weekly)


def remove_policy(store: Store, vm: str) -> None:
    with store.session() as session:
        if session.execute(delete(BackupPolicy).where(BackupPolicy.vm == vm)).rowcount != 1:  # type: ignore[attr-defined]
            raise NotFound(
                f"VM {vm!r} has no retention policy",
                hint="'kvmgr backup policy list' shows the policies",
            )


def policies(store: Store) -> list[dict[str, Any]]:
    with store.session() as session:
        return [
            _dict(row) for row in session.scalars(select(BackupPolicy).order_by(BackupPolicy.vm))
        ]


def _dict(row: BackupPolicy) -> dict[str, Any]:
    return {
        "vm": row.vm,
        "keep_last": row.keep_last,
        "keep_daily": row.keep_daily,
        "keep_weekly": row.keep_weekly,
        "updated": aware(row.updated).isoformat(timespec="seconds"),
        "updated_by": row.updated_by,
    }
