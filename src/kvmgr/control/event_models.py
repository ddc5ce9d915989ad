"""The events table: lifecycle events of every host and task changes, for every API replica.

A worker that owns a host's event connection writes that host's libvirt lifecycle events here;
workers write a row when a task changes.  Each API replica reads new rows and fans them out on
its own event stream (kvmgr.api.events), so a browser connected to any replica sees events of
every host and every worker.  Rows are kept for a bounded time (kvmgr.control.events).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from kvmgr.store.models import Base, utcnow


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    type: Mapped[str] = mapped_column(String(16))  # vm | task
    host: Mapped[str | None] = mapped_column(String(64), default=None)
    #: The VM's libvirt UUID (vm events): a viewer sees only events of VMs they may see.
    uuid: Mapped[str | None] = mapped_column(String(36), default=None)
    #: The task owner's user id (task events): a non-admin sees only their own tasks' events.
    owner_id: Mapped[int | None] = mapped_column(Integer, default=None)
    data: Mapped[dict[str, Any]] = mapped_column()


class HostEventLease(Base):
    """Which worker owns a host's event connection, until ``expires`` (renewed while alive)."""

    __tablename__ = "host_event_leases"

    host: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires: Mapped[datetime] = mapped_column()
