"""What a multi-step operation tells its journal, before each step acts.

Services hold no database, yet an operation killed half way (``kill -9`` of the CLI, of the
server, a reboot) must be finished or undone by the next kvmgr process.  So every service that
makes or removes things in several steps takes a :class:`Steps` and, *before* each step acts,
says how to undo it (:meth:`Steps.undo_with`) or, past the point of no return, how to finish it
(:meth:`Steps.finish_with`).  Both name an action of :data:`ACTIONS` plus JSON arguments, so a
process that never saw the operation can run them from the journal.

Actions must be idempotent: the step may never have happened (killed between the record and the
act), or may have been undone already (killed during recovery).

The control plane gives services a journal-backed :class:`Steps`; library callers and unit tests
get :class:`LocalSteps`, which keeps the same records in memory and rolls back in-process.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvmgr.connect import Connection

#: An idempotent recovery action: the connection of the host the operation ran on, its arguments.
Action = Callable[[Connection, dict[str, Any]], None]

#: Every action a journal may name, by name ("volume.delete", "domain.undefine", ...).
ACTIONS: dict[str, Action] = {}


def load_actions() -> dict[str, Action]:
    """Import every service module, so each action it registers is known; returns :data:`ACTIONS`.

    A process recovering an operation may never have imported the service that journaled it
    (``kvmgr ops recover`` after a killed ``kvmgr backup create``).  Done only when an action
    is missing, so the usual start-up imports nothing more.
    """
    import pkgutil

    import kvmgr.services

    for module in pkgutil.walk_packages(kvmgr.services.__path__, "kvmgr.services."):
        importlib.import_module(module.name)
    return ACTIONS


def recovery_action(name: str) -> Callable[[Action], Action]:
    """Register ``func`` as the action ``name`` that journals may name."""

    def register(func: Action) -> Action:
        if name in ACTIONS and ACTIONS[name] is not func:
            raise RuntimeError(f"recovery action {name!r} registered twice")
        ACTIONS[name] = func
        return func

    return register


class Steps(Protocol):
    """The journal of one operation, as a service sees it."""

    def undo_with(self, action: str, /, **args: Any) -> None:
        """Before a step acts: if the operation does not finish, run ``action(args)``.

        Undo actions run newest first, and only while no :meth:`finish_with` was recorded.
        """

    def finish_with(self, action: str, /, **args: Any) -> None:
        """Past the point of no return: if the operation does not finish, run ``action(args)``.

        Once one finish action is recorded, recovery rolls forward: it runs every finish action
        in the order recorded and no undo action.
        """

    def progress(self, message: str, percent: int | None = None) -> None:
        """What the operation is doing now (shown by CLI spinners, API tasks, ``ops list``)."""

    def uses(self, kind: str, *names: str) -> None:
        """Before the operation checks an object it builds on (``"network", NAME``,
        ``"pool", NAME``, ``"volume", POOL, NAME``): hold it against deletion until the
        operation ends (the control plane's shared lease; nothing in memory).  Raises
        :class:`kvmgr.errors.Busy` while another process deletes it."""


@dataclass
class Record:
    action: str
    args: dict[str, Any]


@dataclass
class LocalSteps:
    """:class:`Steps` kept in memory: undo in-process when the operation fails.

    ``say`` receives progress messages (a CLI spinner, a task row).
    """

    say: Callable[[str], None] = field(default=lambda _message: None)
    undo: list[Record] = field(default_factory=list)
    finish: list[Record] = field(default_factory=list)

    def undo_with(self, action: str, /, **args: Any) -> None:
        _known(action)
        self.undo.append(Record(action, args))

    def finish_with(self, action: str, /, **args: Any) -> None:
        _known(action)
        self.finish.append(Record(action, args))

    def progress(self, message: str, percent: int | None = None) -> None:
        self.say(message)

    def uses(self, kind: str, *names: str) -> None:
        """Nothing to hold: without a control plane no other process deletes through kvmgr's
        leases."""

    def recover(self, conn: Connection) -> list[str]:
        """Finish or undo what was recorded; returns the problems met (each action is tried)."""
        return run_recovery(conn, self.undo, self.finish)


@contextmanager
def owned_steps(
    conn: Connection, steps: Steps | None, say: Callable[[str], None] | None = None
) -> Iterator[Steps]:
    """The operation's journal: the caller's ``steps``, or (library callers) a :class:`LocalSteps`.

    With the caller's journal the caller finishes or undoes a failed operation (the control
    plane does, in-process or at recovery).  With the local one this block does it: when the
    operation fails, what was recorded is finished or undone before the error goes on.
    """
    if steps is not None:
        yield steps
        return
    local = LocalSteps(say=say or (lambda _message: None))
    try:
        yield local
    except BaseException as err:
        problems = local.recover(conn)
        if problems:
            from kvmgr.errors import KvmgrError

            if isinstance(err, KvmgrError):
                err.message += "; cleaning up also failed: " + "; ".join(problems)
        raise


def run_recovery(conn: Connection, undo: list[Record], finish: list[Record]) -> list[str]:
    """Roll forward through ``finish`` when it is not empty, else back through ``undo``.

    Every action is tried even when an earlier one failed; the problems are returned.
    """
    import libvirt

    from kvmgr.errors import KvmgrError, translate

    problems: list[str] = []
    todo = list(finish) if finish else list(reversed(undo))
    actions = ACTIONS if all(r.action in ACTIONS for r in todo) else load_actions()
    for record in todo:
        try:
            actions[record.action](conn, record.args)
        except libvirt.libvirtError as err:
            problems.append(f"{record.action} {record.args}: {translate(err, record.action)}")
        except (KvmgrError, OSError) as err:
            problems.append(f"{record.action} {record.args}: {err}")
    return problems


def _known(action: str) -> None:
    if action not in ACTIONS and action not in load_actions():
        raise RuntimeError(f"recovery action {action!r} is not registered (see services.steps)")


# ------------------------------------------------------------------------------------ tests
#: ``[ACTION:]N[+]``: SIGKILL this process right after the N-th journal record (of ACTION, when
#: named) is committed, i.e. before the step it announces acts; with ``+``, right after that step
#: acted (at the next record, or when the operation ends).  For the kill -9 tests only.
CRASH_ENV = "KVMGR_TEST_CRASH_AFTER"


def with_crash_hook(steps: Steps) -> Steps:
    """``steps`` as it is, or wrapped to die where ``$KVMGR_TEST_CRASH_AFTER`` says."""
    import os

    spec = os.environ.get(CRASH_ENV)
    return steps if not spec else _CrashingSteps(steps, spec)


def operation_ended(steps: Steps) -> None:
    """The operation's block returned (its journal has not yet marked it done): the hook's
    ``N+`` dies here after the last step acted."""
    if isinstance(steps, _CrashingSteps):
        steps.ended()


class _CrashingSteps:
    def __init__(self, inner: Steps, spec: str) -> None:
        self.inner = inner
        action, _sep, count = spec.rpartition(":")
        self.after_act = count.endswith("+")
        self.action = action or None
        self.wanted = int(count.rstrip("+"))
        self.seen = 0
        self.armed = False

    def undo_with(self, action: str, /, **args: Any) -> None:
        self._before_record()
        self.inner.undo_with(action, **args)
        self._after_record(action)

    def finish_with(self, action: str, /, **args: Any) -> None:
        self._before_record()
        self.inner.finish_with(action, **args)
        self._after_record(action)

    def progress(self, message: str, percent: int | None = None) -> None:
        self.inner.progress(message, percent)

    def uses(self, kind: str, *names: str) -> None:
        self.inner.uses(kind, *names)

    def ended(self) -> None:
        """The operation's block is over (the journal has not yet marked it done)."""
        self._before_record()

    def _before_record(self) -> None:
        if self.armed:
            _die()

    def _after_record(self, action: str) -> None:
        if self.action is None or self.action == action:
            self.seen += 1
            if self.seen == self.wanted:
                if not self.after_act:
                    _die()
                self.armed = True


def _die() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
