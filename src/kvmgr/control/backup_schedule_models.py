"""Tables of scheduled backups and stored retention policies.

A schedule names one VM (or every VM of a host) and its windows; each window a worker fires
becomes one ``backup_runs`` row, unique per schedule and window, so that of several workers on
one database exactly one fires it (the insert of the others fails on the key).  A policy is the
retention applied after each backup of its VM.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kvmgr.store.models import Base, utcnow

#: The ``vm`` of a schedule that backs up every VM of its host (``--all``).
EVERY_VM = "*"


class BackupSchedule(Base):
    __tablename__ = "backup_schedules"
    __table_args__ = (UniqueConstraint("host", "vm", name="uq_backup_schedules_host_vm"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(64))
    vm: Mapped[str] = mapped_column(String(200))
    #: Seconds between windows; ``at`` (seconds after midnight, UTC or ``tz``) anchors daily
    #: windows.
    every: Mapped[int] = mapped_column(Integer)
    at: Mapped[int | None] = mapped_column(Integer, default=None)
    #: The IANA zone ``at`` is a wall time in (None: UTC); see kvmgr.control.backup_windows.
    tz: Mapped[str | None] = mapped_column(String(64), default=None)
    repo: Mapped[str | None] = mapped_column(String(64), default=None)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    #: The user who made it (None: the CLI, i.e. root on the host); re-checked at every run.
    owner_id: Mapped[int | None] = mapped_column(Integer, default=None)
    #: The newest window fired (or, for a new schedule, the window it was made in).
    last_window: Mapped[datetime | None] = mapped_column(default=None)


class BackupRun(Base):
    __tablename__ = "backup_runs"
    __table_args__ = (
        UniqueConstraint("schedule_id", "window", name="uq_backup_runs_schedule_window"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(
        ForeignKey("backup_schedules.id", ondelete="CASCADE"), index=True
    )
    window: Mapped[datetime] = mapped_column()
    task_id: Mapped[str | None] = mapped_column(String(36), default=None)
    #: queued | running | done | failed | interrupted
    state: Mapped[str] = mapped_column(String(16))
    queued: Mapped[datetime] = mapped_column(default=utcnow)
    started: Mapped[datetime | None] = mapped_column(default=None)
    finished: Mapped[datetime | None] = mapped_column(default=None)
    duration: Mapped[float] = mapped_column(Float, default=0.0)
    #: Point ids taken, space separated; ``error`` says which VMs failed and why.
    points: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, default=None)


class BackupPolicy(Base):
    __tablename__ = "backup_policies"

    vm: Mapped[str] = mapped_column(String(200), primary_key=True)
    keep_last: Mapped[int] = mapped_column(Integer, default=0)
    keep_daily: Mapped[int] = mapped_column(Integer, default=0)
    keep_weekly: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64))
