"""Backups on the control plane: repositories and the catalog in the database, each backup and
restore a journalled operation under the VM's lease.

The services (:mod:`kvmgr.services.backup`) do the libvirt and repository work on one host's
connection; this module decides which repository, holds the leases, records every point (and
every failed run) in the catalog, and keeps the catalog in step with the repositories on disk.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from kvmgr.control import backup_policies
from kvmgr.control.backup_models import BAD, FAILED, GOOD, BackupPoint, BackupRepo
from kvmgr.control.plane import ControlPlane
from kvmgr.errors import AlreadyExists, InvalidInput, KvmgrError, NotFound
from kvmgr.names import validate_name
from kvmgr.services.backup import backup, restore, retention, verify
from kvmgr.services.backup.repository import Repository
from kvmgr.store import ownership
from kvmgr.store.clip import clip
from kvmgr.store.db import Store
from kvmgr.store.models import Role, aware, utcnow
from kvmgr.store.ownership import ObjectOwner
from kvmgr.store.users import Principal


@dataclass
class Backups:
    """The backup face of a :class:`ControlPlane`."""

    plane: ControlPlane

    # ------------------------------------------------------------------ repositories
    def add_repo(
        self, name: str, path: str, *, default: bool = False, compress: bool = True
    ) -> dict[str, Any]:
        """Register ``path`` (created if missing) as repository ``name``; the first is default.

        A directory that already holds a repository (moved from another host, an NFS share
        others write to) is adopted, and its points enter the catalog.
        """
        validate_name(name, what="repository name")
        repo = Repository.init(Path(path), compress=compress)
        with self.plane.store.session() as session:
            if session.get(BackupRepo, name) is not None:
                raise AlreadyExists(f"backup repository {name!r} exists already")
            first = session.scalars(select(BackupRepo).limit(1)).first() is None
            if default and not first:
                session.execute(update(BackupRepo).values(is_default=False))
            session.add(BackupRepo(name=name, path=str(repo.path), is_default=default or first))
        self.scan(name)
        return self.repo_info(name)

    def repos(self) -> list[dict[str, Any]]:
        with self.plane.store.session() as session:
            rows = session.scalars(select(BackupRepo).order_by(BackupRepo.name)).all()
            return [_repo_dict(row) for row in rows]

    def repo_info(self, name: str) -> dict[str, Any]:
        with self.plane.store.session() as session:
            row = session.get(BackupRepo, name)
            if row is None:
                raise NotFound(
                    f"backup repository {name!r} is not registered",
                    hint="'kvmgr backup repo list' shows them",
                )
            return _repo_dict(row)

    def repository(self, name: str | None = None) -> tuple[str, Repository]:
        """Repository ``name``, or the default one."""
        with self.plane.store.session() as session:
            if name is None:
                row = session.scalars(select(BackupRepo).where(BackupRepo.is_default)).first()
                if row is None:
                    raise NotFound(
                        "no backup repository is registered",
                        hint="add one with 'kvmgr backup repo add NAME PATH'",
                    )
            else:
                row = session.get(BackupRepo, name)
                if row is None:
                    raise NotFound(
                        f"backup repository {name!r} is not registered",
                        hint="'kvmgr backup repo list' shows them",
                    )
            return row.name, Repository(row.path)

    def scan(self, name: str) -> int:
        """Enter the points on disk that the catalog lacks, drop those gone; returns the added."""
        repo_name, repo = self.repository(name)
        on_disk = {manifest["id"]: manifest for manifest in repo.manifests()}
        with self.plane.store.session() as session:
            known = set(
                session.scalars(
                    select(BackupPoint.id).where(
                        BackupPoint.repo == repo_name, BackupPoint.state != FAILED
                    )
                )
            )
            for point in known - set(on_disk):
                session.execute(delete(BackupPoint).where(BackupPoint.id == point))
            for point in set(on_disk) - known:
                session.merge(_row(repo_name, on_disk[point]))
        return len(set(on_disk) - known)

    # ------------------------------------------------------------------ points
    def create(
        self,
        host: str,
        vm: str,
        *,
        repo: str | None = None,
        full: bool = False,
        quiesce: bool = False,
        say: Any = None,
        taken: list[str] | None = None,
    ) -> dict[str, Any]:
        """Take a backup point of ``vm`` (full, or incremental on its last point), then apply
        the VM's stored retention policy, if it has one.

        ``taken`` gets the id of the point, or of the failure row when the backup fails (a
        schedule's run lists them).
        """
        repo_name, repository = self.repository(repo)
        started = datetime.now(UTC)
        key = ""
        try:  # a host that is down or a VM that is gone is a failed run too, in the catalog
            conn = self.plane.connect(host)
            lease = self.plane.vm_key(host, vm)
            key = lease.key
            with self.plane.operation("backup", vm, host, keys=[lease], say=say) as steps:
                manifest = backup.create_backup(
                    conn, repository, vm, steps, full=full, quiesce=quiesce, host=host
                )
        except KvmgrError as err:
            failed = self._record_failure(repo_name, host, vm, key, started, err)
            if taken is not None:
                taken.append(failed)
            raise
        with self.plane.store.session() as session:
            session.merge(_row(repo_name, manifest))
            # The point is its VM's owner's (not the taker's: an admin's schedule backs up an
            # operator's VM), so that owner may list and restore it after the VM is gone.
            vm_owner = ownership.get(session, "vm", manifest["vm"]["uuid"], host)
            if vm_owner is not None:
                ownership.record(
                    session,
                    "backup",
                    manifest["id"],
                    vm_owner.owner_id,
                    vm_owner.group,
                    host=host,
                    label=vm,
                    creator=self.plane.actor,
                )
        if taken is not None:
            taken.append(manifest["id"])
        summary = _summary(manifest)
        policy = backup_policies.get_policy(self.plane.store, vm)
        if policy is not None:
            # The point is taken: a prune that fails (a repository gone read-only) is reported
            # with it, not as a failed backup; the next backup's prune tries again.
            try:
                summary["pruned"] = self.prune(vm, policy)["deleted"]
            except KvmgrError as err:
                summary["prune_error"] = str(err)
        return summary

    def _record_failure(
        self, repo: str, host: str, vm: str, key: str, started: datetime, err: KvmgrError
    ) -> str:
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        failed = clip(BackupPoint, "id", f"{vm}.{stamp}.failed")
        with self.plane.store.session() as session:
            session.merge(
                BackupPoint(
                    id=failed,
                    repo=repo,
                    vm_name=clip(BackupPoint, "vm_name", vm),
                    vm_uuid=key.rsplit("/", 1)[-1][:36],
                    host=host,
                    kind="",
                    state=FAILED,
                    created=started,
                    duration=(datetime.now(UTC) - started).total_seconds(),
                    error=str(err),
                )
            )
        return failed

    def points(self, vm: str | None = None, *, repo: str | None = None) -> list[dict[str, Any]]:
        """Points (and failed runs) oldest first, of one VM or all."""
        query = select(BackupPoint).order_by(BackupPoint.created, BackupPoint.id)
        if vm is not None:
            query = query.where(BackupPoint.vm_name == vm)
        if repo is not None:
            query = query.where(BackupPoint.repo == repo)
        with self.plane.store.session() as session:
            return [_point_dict(row) for row in session.scalars(query)]

    def point(self, point: str) -> tuple[BackupPoint, Repository]:
        with self.plane.store.session() as session:
            row = session.get(BackupPoint, point)
            if row is None or row.state == FAILED:
                raise NotFound(
                    f"backup point {point!r} is not in the catalog",
                    hint="'kvmgr backup list' shows the points",
                )
            session.expunge(row)
            _, repository = self.repository(row.repo)
        return row, repository

    def latest(self, vm: str) -> str:
        """The newest good point of VM ``vm``."""
        good = [row for row in self.points(vm) if row["state"] == GOOD]
        if not good:
            raise NotFound(f"VM {vm!r} has no good backup point", hint="'kvmgr backup list'")
        return str(good[-1]["id"])

    def verify(self, point: str | None = None) -> list[dict[str, Any]]:
        """Re-read and check every chunk of one point, or of every point in the catalog."""
        if point is not None:
            ids = [point]
            self.point(point)  # NotFound with a hint
        else:
            ids = [row["id"] for row in self.points() if row["state"] != FAILED]
        verdicts = []
        for one in ids:
            _, repository = self.point(one)
            verdict = verify.verify_point(repository, one)
            with self.plane.store.session() as session:
                session.execute(
                    update(BackupPoint)
                    .where(BackupPoint.id == one)
                    .values(
                        state=GOOD if verdict.ok else BAD,
                        verified=utcnow(),
                        error=None if verdict.ok else "; ".join(verdict.problems)[:2000],
                    )
                )
            verdicts.append(verdict.as_dict())
        return verdicts

    def restore(
        self,
        host: str,
        point: str,
        *,
        as_name: str | None = None,
        pool: str = "default",
        start: bool = False,
        say: Any = None,
    ) -> dict[str, Any]:
        """Restore ``point`` into a new VM on ``host`` (never over an existing VM or volume)."""
        row, repository = self.point(point)
        name = as_name or row.vm_name
        validate_name(name, what="VM name")
        key = f"vm-name:{host}/{name}"  # the VM does not exist yet: lease its name
        with self.plane.operation("restore", name, host, keys=[key], say=say) as steps:
            return restore.restore_point(
                self.plane.connect(host),
                repository,
                point,
                steps,
                as_name=as_name,
                pool=pool,
                start=start,
            )

    def prune(self, vm: str, policy: retention.Policy, *, dry_run: bool = False) -> dict[str, Any]:
        """Delete the good points of ``vm`` that ``policy`` does not keep (per repository)."""
        rows = [row for row in self.points(vm) if row["state"] != FAILED]
        kept: set[str] = set()
        for repo in {row["repo"] for row in rows}:
            mine = [
                (r["id"], datetime.fromisoformat(r["created"])) for r in rows if r["repo"] == repo
            ]
            kept |= retention.keep(mine, policy)
        doomed = [row["id"] for row in rows if row["id"] not in kept]
        if not dry_run:
            for point in doomed:
                self.delete(point)
        return {"kept": sorted(kept), "deleted": doomed, "dry_run": dry_run}

    def delete(self, point: str) -> None:
        """Delete a point (or forget a failed run); data other points need stays."""
        with self.plane.store.session() as session:
            row = session.get(BackupPoint, point)
            if row is None:
                raise NotFound(f"backup point {point!r} is not in the catalog")
            failed, repo_name, host = row.state == FAILED, row.repo, row.host
        if not failed:
            _, repository = self.repository(repo_name)
            with contextlib.suppress(NotFound):  # gone from disk already: the catalog follows
                repository.delete_point(point)
        with self.plane.store.session() as session:
            session.execute(delete(BackupPoint).where(BackupPoint.id == point))
            ownership.forget(session, "backup", point, host)

    def visible(self, who: Principal, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows of :meth:`points` that ``who`` may see: an admin all, an operator those of
        the VMs they or their group owned when the point was taken (failed runs by the VM's
        owner record now); a point without an owner record is the admins'."""
        if who.at_least(Role.admin):
            return rows
        with self.plane.store.session() as session:
            owned = session.scalars(
                select(ObjectOwner).where(ObjectOwner.kind.in_(("backup", "vm")))
            )
            rows_by = {(row.kind, row.host, row.key): row for row in owned}
            return [
                row
                for row in rows
                if ownership.may_act(
                    who,
                    rows_by.get(("backup", row["host"], row["id"]))
                    or (
                        rows_by.get(("vm", row["host"], row["uuid"]))
                        if row["state"] == FAILED
                        else None
                    ),
                )
            ]

    def may_restore(self, who: Principal, point: str) -> bool:
        row, _ = self.point(point)
        if who.at_least(Role.admin):
            return True
        with self.plane.store.session() as session:
            return ownership.may_act(who, ownership.get(session, "backup", point, row.host))

    def overview(self, who: Principal) -> list[dict[str, Any]]:
        """Per VM (that ``who`` may see): its newest good point, its newest failure, and how many
        runs failed since the last good one (the backups page)."""
        by_vm: dict[str, dict[str, Any]] = {}
        for row in self.visible(who, self.points()):
            entry = by_vm.setdefault(
                row["vm"],
                {"vm": row["vm"], "last_good": None, "last_failure": None, "failures_since": 0},
            )
            if row["state"] == FAILED:
                entry["last_failure"] = row
                entry["failures_since"] += 1
            elif row["state"] == GOOD:
                entry["last_good"] = row
                entry["failures_since"] = 0
            else:
                entry["bad"] = row
        return sorted(by_vm.values(), key=lambda entry: entry["vm"])


def metric_lines(store: Store) -> list[str]:
    """Prometheus lines per VM: when its last good point was taken, how long that took, and
    how many backup runs failed (``/metrics``)."""
    last: dict[str, BackupPoint] = {}
    failed: dict[str, int] = {}
    with store.session() as session:
        for row in session.scalars(select(BackupPoint).order_by(BackupPoint.created)):
            if row.state == FAILED:
                failed[row.vm_name] = failed.get(row.vm_name, 0) + 1
            elif row.state == GOOD:
                last[row.vm_name] = row
                failed.setdefault(row.vm_name, 0)
    lines = [
        "# HELP kvmgr_backup_last_success_timestamp_seconds when the newest good point was taken",
        "# TYPE kvmgr_backup_last_success_timestamp_seconds gauge",
    ]
    lines += [
        f'kvmgr_backup_last_success_timestamp_seconds{{vm="{_label(vm)}"}} '
        f"{int(aware(row.created).timestamp())}"
        for vm, row in sorted(last.items())
    ]
    lines += [
        "# HELP kvmgr_backup_last_duration_seconds how long the VM's newest good point took",
        "# TYPE kvmgr_backup_last_duration_seconds gauge",
    ]
    lines += [
        f'kvmgr_backup_last_duration_seconds{{vm="{_label(vm)}"}} {row.duration:.3f}'
        for vm, row in sorted(last.items())
    ]
    lines += [
        "# HELP kvmgr_backup_failures backup runs of the VM that failed (in the catalog)",
        "# TYPE kvmgr_backup_failures gauge",
    ]
    lines += [f'kvmgr_backup_failures{{vm="{_label(vm)}"}} {n}' for vm, n in sorted(failed.items())]
    return lines


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _repo_dict(row: BackupRepo) -> dict[str, Any]:
    info: dict[str, Any] = {"name": row.name, "path": row.path, "default": row.is_default}
    try:
        info["compress"] = Repository(row.path).compress
    except KvmgrError as err:  # unmounted share, moved directory: say so, list the rest
        info["compress"] = None
        info["problem"] = str(err)
    return info


def _row(repo: str, manifest: dict[str, Any]) -> BackupPoint:
    created = datetime.fromisoformat(manifest["created"])
    return BackupPoint(
        id=manifest["id"],
        repo=repo,
        vm_name=clip(BackupPoint, "vm_name", manifest["vm"]["name"]),
        vm_uuid=manifest["vm"]["uuid"],
        host=clip(BackupPoint, "host", manifest.get("host", "")),
        kind=manifest["kind"],
        parent=manifest.get("parent"),
        state=GOOD,
        consistency=manifest.get("consistency", ""),
        created=created,
        duration=float(manifest.get("duration", 0.0)),
        bytes_read=int(manifest.get("bytes_read", 0)),
        bytes_stored=int(manifest.get("bytes_stored", 0)),
    )


def _point_dict(row: BackupPoint) -> dict[str, Any]:
    return {
        "id": row.id,
        "vm": row.vm_name,
        "uuid": row.vm_uuid,
        "kind": row.kind,
        "state": row.state,
        "consistency": row.consistency,
        "created": aware(row.created).isoformat(timespec="seconds"),
        "duration": round(row.duration, 2),
        "read": row.bytes_read,
        "stored": row.bytes_stored,
        "parent": row.parent,
        "repo": row.repo,
        "host": row.host,
        "verified": aware(row.verified).isoformat(timespec="seconds") if row.verified else None,
        "error": row.error,
    }


def _summary(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "kind", "parent", "consistency", "duration", "bytes_read", "bytes_stored")
    return {key: manifest.get(key) for key in keys}


def check_point_input(point: str) -> str:
    if not point or "/" in point:
        raise InvalidInput(f"{point!r} is not a backup point id", hint="'kvmgr backup list'")
    return point
