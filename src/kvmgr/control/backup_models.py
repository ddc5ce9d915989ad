"""Tables of the backup catalog: repositories, and the points taken into them (and failures).

The repository on disk is the truth about what a point holds (its manifest); the catalog is
what ``kvmgr backup list`` and the API read without opening every manifest, plus what the disk
cannot say: which repository is the default, failed runs, when a point was last verified.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from kvmgr.store.models import Base, utcnow

#: Point states: a good point is whole on disk; a bad one failed its last verify; a failed run
#: left no point (the row says why).
GOOD, BAD, FAILED = "good", "bad", "failed"


class BackupRepo(Base):
    __tablename__ = "backup_repos"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    is_default: Mapped[bool] = mapped_column(default=False)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class BackupPoint(Base):
    __tablename__ = "backup_points"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    repo: Mapped[str] = mapped_column(
        ForeignKey("backup_repos.name", ondelete="CASCADE"), index=True
    )
    vm_name: Mapped[str] = mapped_column(String(200), index=True)
    vm_uuid: Mapped[str] = mapped_column(String(36), index=True)
    host: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # full | incremental
    parent: Mapped[str | None] = mapped_column(String(200), default=None)
    state: Mapped[str] = mapped_column(String(16))
    consistency: Mapped[str] = mapped_column(String(16), default="")
    created: Mapped[datetime] = mapped_column(default=utcnow)
    duration: Mapped[float] = mapped_column(Float, default=0.0)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_stored: Mapped[int] = mapped_column(BigInteger, default=0)
    verified: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
