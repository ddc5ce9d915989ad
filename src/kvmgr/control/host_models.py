"""The host registry's table: one row per libvirt daemon kvmgr manages."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from kvmgr.store.models import Base, utcnow


class Host(Base):
    """A host by the name users give it; ``host_uuid`` is what libvirt says the machine is, so the
    same daemon registered under two names or URIs is detected."""

    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    uri: Mapped[str] = mapped_column(String(512), unique=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The host commands without --host act on (at most one row has it).
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    host_uuid: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    added: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime | None] = mapped_column(default=None)
