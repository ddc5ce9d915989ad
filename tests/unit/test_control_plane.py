"""The control plane on libvirt's test driver and SQLite: operations, journal, in-process undo,
recovery of a dead holder's operation, leases inside one process."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from kvmgr.connect import Connection, open_connection
from kvmgr.control.journal import load_records
from kvmgr.control.leases import holder_alive, holder_id
from kvmgr.control.models import Lease, Operation, OperationRecord
from kvmgr.control.plane import ControlPlane, vm_key
from kvmgr.errors import Busy, NotFound, OperationFailed
from kvmgr.services.steps import recovery_action
from kvmgr.store.db import Store

#: What the test actions did, in order (actions must be registered once per process).
DONE: list[str] = []


@recovery_action("test.core.note")
def _note(_conn: Connection, args: dict[str, Any]) -> None:
    DONE.append(str(args["what"]))


@recovery_action("test.core.fail")
def _fail(_conn: Connection, args: dict[str, Any]) -> None:
    raise OperationFailed(f"cannot {args['what']}")


@pytest.fixture
def conn() -> Iterator[Connection]:
    connection = open_connection("test:///default")
    yield connection
    connection.close()


@pytest.fixture
def plane(tmp_path: Path, conn: Connection) -> Iterator[ControlPlane]:
    DONE.clear()
    store = Store(f"sqlite:///{tmp_path / 'kvmgr.db'}")
    yield ControlPlane(store, "cli:tester", lambda _host: conn)
    store.dispose()


def _op(plane: ControlPlane, op_id: str | None = None) -> Operation:
    with plane.store.session() as session:
        query = select(Operation) if op_id is None else select(Operation).filter_by(id=op_id)
        return session.scalars(query).one()


def test_success_marks_done_and_drops_records(plane: ControlPlane) -> None:
    with plane.operation("create", "web1", "local", keys=["vm:local/u1"]) as steps:
        steps.undo_with("test.core.note", what="delete volume")
        steps.progress("copying")
        with pytest.raises(Busy, match="vm:local/u1 is busy: create web1 by cli:tester since"):
            _other_thread(lambda: plane.lease("vm:local/u1", "start").__enter__())
    op = _op(plane)
    assert (op.state, op.kind, op.target, op.actor, op.keys) == (
        "done",
        "create",
        "web1",
        "cli:tester",
        ["vm:local/u1"],
    )
    assert load_records(plane.store, op.id) == ([], [])
    assert DONE == []
    assert plane.busy("vm:local/u1") is None


def test_failure_undoes_newest_first_and_says_so(plane: ControlPlane) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        plane.operation("create", "web1", "local") as steps,
    ):
        steps.undo_with("test.core.note", what="delete volume")
        steps.undo_with("test.core.note", what="undefine domain")
        raise RuntimeError("boom")
    assert DONE == ["undefine domain", "delete volume"]
    op = _op(plane)
    assert op.state == "failed"
    assert op.error == "RuntimeError: boom"
    assert "undid: test.core.note" in op.message


def test_failure_past_no_return_rolls_forward(plane: ControlPlane) -> None:
    with pytest.raises(RuntimeError), plane.operation("delete", "web1", "local") as steps:
        steps.undo_with("test.core.note", what="redefine")
        steps.finish_with("test.core.note", what="delete volume a")
        steps.finish_with("test.core.note", what="delete volume b")
        raise RuntimeError("killed half way")
    assert DONE == ["delete volume a", "delete volume b"]
    assert _op(plane).state == "recovered"


def test_failed_undo_is_kept_for_a_retry(plane: ControlPlane) -> None:
    with pytest.raises(RuntimeError), plane.operation("create", "web1", "local") as steps:
        steps.undo_with("test.core.fail", what="delete volume")
        raise RuntimeError("boom")
    op = _op(plane)
    assert op.state == "recovery-failed"
    assert "cannot delete volume" in (op.error or "")
    assert len(load_records(plane.store, op.id)[0]) == 1


def test_unknown_action_is_refused_before_the_step(plane: ControlPlane) -> None:
    with (
        pytest.raises(RuntimeError, match="not registered"),
        plane.operation("create", "web1", "local") as steps,
    ):
        steps.undo_with("no.such.action", x=1)


def _dead_holder() -> str:
    """The holder id of a process of this machine that has exited."""
    child = subprocess.Popen(["true"])
    child.wait()
    return f"{socket.gethostname()}:{child.pid}:1"


def _orphan(plane: ControlPlane, holder: str, records: list[tuple[str, str]]) -> str:
    """An operation left 'running' by ``holder`` with these (phase, what) records."""
    with plane.store.session() as session:
        session.add(
            Operation(
                id="op-1",
                kind="create",
                target="web1",
                host="local",
                actor="cli:gone",
                holder=holder,
                keys=["vm:local/u1"],
                state="running",
            )
        )
        session.flush()
        for seq, (phase, what) in enumerate(records, 1):
            session.add(
                OperationRecord(
                    operation_id="op-1",
                    seq=seq,
                    phase=phase,
                    action="test.core.note",
                    args={"what": what},
                )
            )
    return "op-1"


def test_recovery_undoes_a_dead_holders_operation_once(plane: ControlPlane) -> None:
    dead = _dead_holder()
    assert holder_alive(dead) is False
    assert holder_alive(holder_id()) is True
    _orphan(plane, dead, [("undo", "delete volume"), ("undo", "undefine")])
    outcomes = plane.recover()
    assert [(o.state, o.target) for o in outcomes] == [("undone", "web1")]
    assert DONE == ["undefine", "delete volume"]
    assert _op(plane).state == "undone"
    assert plane.recover() == []  # idempotent: nothing left
    assert DONE == ["undefine", "delete volume"]


def test_recovery_rolls_forward_past_no_return(plane: ControlPlane) -> None:
    _orphan(plane, _dead_holder(), [("undo", "redefine"), ("finish", "delete volume")])
    assert [o.state for o in plane.recover()] == ["recovered"]
    assert DONE == ["delete volume"]


def test_recovery_leaves_a_live_holders_operation(plane: ControlPlane) -> None:
    _orphan(plane, holder_id(), [("undo", "delete volume")])
    assert plane.recover() == []
    assert _op(plane).state == "running"
    # A holder elsewhere (not this machine) that keeps its op lease is left alone as well.
    with plane.store.session() as session:
        session.get(Operation, "op-1").holder = "elsewhere:1:1"  # type: ignore[union-attr]
    other = ControlPlane(plane.store, "cli:other", plane.connect, leases=plane.leases)
    with other.lease("op:op-1", "create web1"):
        assert _other_thread(plane.recover) == []
    assert DONE == []


def test_recovery_waits_for_an_unreachable_host(plane: ControlPlane) -> None:
    def unreachable(_host: str) -> Connection:
        raise OperationFailed("cannot connect")

    _orphan(plane, _dead_holder(), [("undo", "delete volume")])
    offline = ControlPlane(plane.store, "cli:tester", unreachable, leases=plane.leases)
    assert [o.state for o in offline.recover()] == ["running"]
    assert DONE == []
    assert [o.state for o in plane.recover()] == ["undone"]


def test_lease_reentrant_in_its_thread(plane: ControlPlane) -> None:
    with plane.lease("vm:local/u1", "clone to b"), plane.lease("vm:local/u1", "snapshot"):
        assert str(plane.busy("vm:local/u1")).startswith("clone to b by cli:tester since")
    assert plane.busy("vm:local/u1") is None


def test_two_planes_of_one_process_refuse_each_other(plane: ControlPlane) -> None:
    """The API's plane and a worker's, say: separate objects, the same holder id in the rows."""
    worker = ControlPlane(plane.store, "worker", plane.connect)
    assert worker.leases is not plane.leases
    with plane.lease("vm:local/u1", "reboot"), pytest.raises(Busy, match="reboot by cli:tester"):
        _other_thread(lambda: worker.lease("vm:local/u1", "start").__enter__())


def test_renewal_reports_a_lost_lease_only(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    with plane.lease("vm:local/u1", "reboot"), plane.lease("vm:local/u2", "start"):
        with plane.store.session() as session:  # as a takeover after a long stall would
            session.execute(delete(Lease).where(Lease.key == "vm:local/u1"))
        plane.leases.renew(["vm:local/u1", "vm:local/u2", "vm:local/released"])
    assert "lost the leases ['vm:local/u1']" in caplog.text


def test_wait_gives_up_after_timeout(plane: ControlPlane) -> None:
    with plane.lease("vm:local/u1", "reboot"), pytest.raises(Busy):
        _other_thread(
            lambda: plane.lease("vm:local/u1", "start", wait=True, timeout=0.3).__enter__()
        )


def test_vm_key_names_the_vm(plane: ControlPlane, conn: Connection) -> None:
    uuid = conn.virconn.lookupByName("test").UUIDString()
    assert plane.vm_key("local", "test") == vm_key("local", uuid, "test")
    key = plane.vm_key("local", "test")
    with plane.lease(key, "start"), pytest.raises(Busy, match=r"^VM test is busy: start by cli:"):
        _other_thread(lambda: plane.lease(key, "stop").__enter__())


def test_vm_key_of_an_unknown_vm(plane: ControlPlane) -> None:
    with pytest.raises(NotFound):
        plane.vm_key("local", "no-such-vm")


def _other_thread(work: Any) -> Any:
    """Run ``work`` in another thread; its result, or re-raise what it raised."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except BaseException as err:
            result["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    if "error" in result:
        raise result["error"]
    return result.get("value")
