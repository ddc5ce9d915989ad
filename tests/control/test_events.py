"""The events table: read by every API replica from a cursor, and filtered per subscriber."""

from __future__ import annotations

from kvmgr.control import events, tasks
from kvmgr.control.ownership import LOCAL_HOST, Owner
from kvmgr.store.db import Store
from kvmgr.store.models import Role
from kvmgr.store.users import Principal
from tests.control.conftest import principals

ANN = Principal(id=2, name="ann", role=Role.operator, group="team")
BOB = Principal(id=3, name="bob", role=Role.operator, group="team")
EVE = Principal(id=4, name="eve", role=Role.viewer, group="other")
BOSS = Principal(id=1, name="boss", role=Role.admin, group=None)


def test_each_subscriber_gets_only_what_it_may_see() -> None:
    owners = {
        LOCAL_HOST: {"u-ann": Owner(2, "ann", None, "ann"), "u-team": Owner(9, "x", "team", "x")}
    }
    ann_task = {"type": "task", "task": {"owner_id": 2}}
    ann_vm = {"type": "vm", "host": LOCAL_HOST, "uuid": "u-ann"}
    team_vm = {"type": "vm", "host": LOCAL_HOST, "uuid": "u-team"}
    nobody_vm = {"type": "vm", "host": LOCAL_HOST, "uuid": "u-admins"}
    other_host = {"type": "vm", "host": "elsewhere", "uuid": "u-ann"}  # same UUID, other host
    expect = {
        "ann": (ANN, [True, True, True, False, False]),
        "bob": (BOB, [False, False, True, False, False]),  # a group mate: VMs yes, tasks no
        "eve": (EVE, [False, False, False, False, False]),
        "boss": (BOSS, [True, True, True, True, True]),
    }
    for name, (who, wanted) in expect.items():
        got = [
            events.may_receive(who, event, owners)
            for event in (ann_task, ann_vm, team_vm, nobody_vm, other_host)
        ]
        assert got == wanted, name
    assert events.may_receive(EVE, {"type": "stats", "vms": []}, owners)


def test_a_new_cursor_replays_no_history(store: Store) -> None:
    people = principals(store)
    for target in ("old-1", "old-2"):
        tasks.submit(store, "noop", {}, owner=people["ann"], target=target)
    with store.session() as session:
        cursor = events.Cursor.at_newest(session)
        assert cursor.read(session) == []  # the rows already there are not news
    fresh = tasks.submit(store, "noop", {}, owner=people["ann"], target="new")
    with store.session() as session:
        assert [event["task"]["id"] for event in cursor.read(session)] == [fresh["id"]]


def test_a_cursor_delivers_each_row_once_including_late_commits(store: Store) -> None:
    people = principals(store)
    with store.session() as session:
        cursor = events.Cursor.at_newest(session)
    first = tasks.submit(store, "noop", {}, owner=people["ann"], target="a")
    with store.session() as session:
        read = cursor.read(session)
    assert [event["task"]["id"] for event in read] == [first["id"]]
    with store.session() as session:
        assert cursor.read(session) == []  # nothing twice
        # A row with a smaller id becoming visible later (PostgreSQL hands ids out before
        # commit) is still delivered: the cursor re-reads a window below its highest id.
        events.record_vm(session, LOCAL_HOST, "u-1", {"event": "started", "name": "vm1"})
        session.flush()
    cursor.seen.clear()
    cursor.last += 5
    with store.session() as session:
        again = cursor.read(session)
    assert {event["type"] for event in again} == {"task", "vm"}
    with store.session() as session:
        assert cursor.read(session) == []
