"""Secrets a task needs in clear (a Windows install's passwords and product key), handed from
the API to the worker that runs the task, and to nothing else.

Task params are readable by whoever may see the task and kept after it ends, so a password in
them would be kept too.  Most secrets never need to be there: Linux installs take SHA-512 crypt
hashes, made in the API before the task is stored.  Windows takes the password itself (its
answer file holds it obscured, which is base64, not a hash), so for it the API stores the values
here instead:

- :func:`put` in the transaction that stores the task row (kvmgr.control.tasks.add_task), so a
  task never exists without its secrets, nor secrets without their task;
- :func:`take` reads and deletes them in one transaction: the handler gets them once
  (``TaskContext.secrets()``);
- :func:`drop` in the transaction that ends the task however it ends (done, failed, cancelled
  while queued, marked interrupted), so nothing waits for a task that will never take it.

No route returns this table, and the values go into no params, result, audit row, event, log
line or error message.  See docs/SECURITY.md.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import String, Text, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from kvmgr.errors import InvalidInput
from kvmgr.store.db import Store
from kvmgr.store.models import Base

#: The longest name a secret may have (the column's width).
NAME_LENGTH = 32


class TaskSecret(Base):
    """One secret of one task, until its handler takes it or the task ends."""

    __tablename__ = "task_secrets"

    task_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    value: Mapped[str] = mapped_column(Text)

    def __repr__(self) -> str:  # never the value, even in a debugger or a log of the object
        return f"TaskSecret(task_id={self.task_id!r}, name={self.name!r})"


def put(session: Session, task_id: str, secrets: Mapping[str, str]) -> None:
    """Store ``secrets`` of task ``task_id`` in the caller's transaction."""
    for name, value in secrets.items():
        if not name or len(name) > NAME_LENGTH:
            raise InvalidInput(f"task secret name {name!r} is not 1 to {NAME_LENGTH} characters")
        session.add(TaskSecret(task_id=task_id, name=name, value=value))


def take(store: Store, task_id: str) -> dict[str, str]:
    """The secrets of ``task_id``, deleted as they are read: a second call gets none."""
    with store.session() as session:
        rows = session.execute(
            select(TaskSecret.name, TaskSecret.value).where(TaskSecret.task_id == task_id)
        ).all()
        session.execute(delete(TaskSecret).where(TaskSecret.task_id == task_id))
        return {name: value for name, value in rows}


def drop(session: Session, task_id: str) -> None:
    """Delete whatever secrets ``task_id`` still has, in the caller's transaction."""
    session.execute(delete(TaskSecret).where(TaskSecret.task_id == task_id))


def names(store: Store, task_id: str) -> list[str]:
    """Which secrets ``task_id`` holds now (names only: for tests and diagnostics)."""
    with store.session() as session:
        return sorted(session.scalars(select(TaskSecret.name).where(TaskSecret.task_id == task_id)))
