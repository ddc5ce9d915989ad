"""A backup schedule run by a real worker on the real daemon, with a real demo guest: windows
every 10 s; each run's point appears in the catalog and verifies; the first is full, the next
incremental, and after the newest point is deleted (the chain broken) the next run is full
again; the stored policy (keep the last 2) prunes after each scheduled backup.  A schedule
whose VM was removed fails its run, and the failure shows in the catalog, the run, the audit
log and the metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmgr.connect import Connection
from kvmgr.control import backup_policies, backup_schedules, ownership, tasks
from kvmgr.control.authz import cli_principal
from kvmgr.control.backup_models import GOOD
from kvmgr.control.backup_schedules import Schedules
from kvmgr.control.backups import Backups
from kvmgr.control.plane import ControlPlane
from kvmgr.control.worker import Worker
from kvmgr.errors import KvmgrError
from kvmgr.services import media, vms
from kvmgr.services.backup.retention import Policy
from kvmgr.services.create import DiskRequest, VMSpec, create_vm
from kvmgr.store import audit, users
from kvmgr.store.db import Store
from kvmgr.store.models import Role
from kvmgr.store.users import Principal
from kvmgr.units import MIB

pytestmark = pytest.mark.integration

PREFIX = "t-bks-"
GUEST = f"{PREFIX}guest"
GONE = f"{PREFIX}gone"
RESTORED = f"{PREFIX}restored"
HOST = "local"


@pytest.fixture(scope="module")
def plane(conn: Connection, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('bks-db') / 'kvmgr.db'}")
    face = ControlPlane(store, "test:bks", lambda _host: conn)
    Backups(face).add_repo("main", str(tmp_path_factory.mktemp("bks-repo") / "repo"))
    yield face
    store.dispose()


@pytest.fixture(scope="module")
def guest(conn: Connection, iso: str, module_cleanup: object) -> Iterator[str]:
    module_cleanup.prefix(PREFIX)  # type: ignore[attr-defined]
    spec = VMSpec(
        GUEST,
        iso=iso,
        memory=256 * MIB,
        vcpus=1,
        disks=[DiskRequest(size=32 * MIB)],
        graphics="none",
        wait="ready",
    )
    create_vm(conn, spec)
    yield GUEST
    with contextlib.suppress(KvmgrError):
        vms.delete(conn, GUEST, force=True)


@pytest.fixture
def worker(plane: ControlPlane, conn: Connection) -> Iterator[Worker]:
    running = Worker(plane.store, lambda _host: conn, poll=0.1, beat=0.5)
    running.start()
    yield running
    running.stop(60)


def _runs_done(schedules: Schedules, schedule_id: int, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        ended = [
            run for run in schedules.runs(schedule_id) if run["state"] not in ("queued", "running")
        ]
        if len(ended) >= count:
            return ended
        time.sleep(0.5)
    raise AssertionError(f"schedule {schedule_id} did not end {count} runs: {schedules.runs()}")


def test_a_worker_runs_the_schedule_incremental_then_full_when_the_chain_breaks(
    plane: ControlPlane, guest: str, worker: Worker
) -> None:
    backups, schedules = Backups(plane), Schedules(plane)
    backup_policies.set_policy(plane.store, guest, Policy(keep_last=2), by="test")
    made = schedules.add(HOST, guest, every="10s", who=cli_principal())
    started = time.monotonic()
    first = _runs_done(schedules, made["id"], 1)[0]
    assert first["state"] == "done", first
    waited = time.monotonic() - started
    assert waited < 10 + 5 + 60, waited  # one window (10 s), a beat, the backup itself
    point = first["points"][0]  # type: ignore[index]
    row = next(r for r in backups.points(guest) if r["id"] == point)
    assert (row["state"], row["kind"]) == (GOOD, "full")
    assert backups.verify(point)[0]["ok"]

    second = _runs_done(schedules, made["id"], 2)[0]  # newest first
    assert second["state"] == "done", second
    second_point = second["points"][0]  # type: ignore[index]
    assert (
        next(r for r in backups.points(guest) if r["id"] == second_point)["kind"] == "incremental"
    )

    assert [r["id"] for r in backups.points(guest) if r["state"] == GOOD] == [point, second_point]
    backups.delete(second_point)  # the chain the next incremental would build on is gone
    third = _runs_done(schedules, made["id"], 3)[0]
    assert third["state"] == "done", third
    third_point = third["points"][0]  # type: ignore[index]
    assert next(r for r in backups.points(guest) if r["id"] == third_point)["kind"] == "full"
    schedules.remove(HOST, guest)

    # keep_last=2 applied after each scheduled backup: the newest two points remain.
    good = [r["id"] for r in backups.points(guest) if r["state"] == GOOD]
    assert good == [point, third_point], good
    assert schedules.all() == [] and worker.ran >= 3


def test_a_scheduled_backup_that_fails_is_recorded(
    plane: ControlPlane, conn: Connection, worker: Worker, tmp_path: Path
) -> None:
    xml = (
        f"<domain type='qemu'><name>{GONE}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    conn.virconn.defineXML(xml)
    schedules = Schedules(plane)
    made = schedules.add(HOST, GONE, every="10s", who=cli_principal())
    conn.virconn.lookupByName(GONE).undefine()  # removed after it was scheduled
    run = _runs_done(schedules, made["id"], 1)[0]
    schedules.remove(HOST, GONE)
    assert run["state"] == "failed" and GONE in str(run["error"]), run
    failed = [r for r in Backups(plane).points(GONE) if r["state"] == "failed"]
    assert [r["id"] for r in failed] == run["points"]
    assert failed[0]["error"] and failed[0]["duration"] >= 0
    with plane.store.session() as session:
        entries = [(e.action, e.result) for e in audit.entries(session, target=GONE)]
    assert ("backup.scheduled", "error") in entries
    lines = backup_schedules.metric_lines(plane.store)
    assert all(f'vm="{GONE}"' not in line for line in lines)  # removed: no series left


def test_an_operator_backs_up_and_restores_their_own_vm(
    plane: ControlPlane, conn: Connection, guest: str, worker: Worker
) -> None:
    """Through the queue as the API submits: op1 (team-a) owns the guest, backs it up and
    restores the point into a new VM that is theirs; op3 (team-b) may not restore it."""
    store = plane.store
    with store.session() as session:
        for name, group in (("t-bks-op1", "team-a"), ("t-bks-op3", "team-b")):
            users.create_user(session, name, "password-1234", Role.operator, group)
        op1 = users.authenticate(session, "t-bks-op1", "password-1234")
        op3 = users.authenticate(session, "t-bks-op3", "password-1234")
    assert op1 is not None and op3 is not None
    uuid = vms.lookup(conn, guest).UUIDString()
    ownership.record_owner(store, "vm", uuid, op1, label=guest, host=HOST)

    def run(kind: str, params: dict[str, object], who: Principal) -> dict[str, object]:
        task = tasks.submit(store, kind, params, owner=who, target=guest, host=HOST)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with store.session() as session:
                row = tasks.get_task(session, who, task["id"])
                if row.state not in tasks.ACTIVE_STATES:
                    return tasks.as_dict(row)
            time.sleep(0.3)
        raise AssertionError(f"task {kind} did not end")

    made = run("backup.create", {"vm": guest}, op1)
    assert made["state"] == "done", made
    point = str(made["result"]["id"])  # type: ignore[index]
    backups = Backups(plane)
    assert point in {row["id"] for row in backups.visible(op1, backups.points(guest))}
    assert point not in {row["id"] for row in backups.visible(op3, backups.points(guest))}
    other_repo = run("backup.create", {"vm": guest, "repo": "main"}, op1)
    assert other_repo["state"] == "failed" and "default repository" in str(other_repo["error"])

    refused = run("backup.restore", {"point": point, "as_name": RESTORED}, op3)
    assert refused["state"] == "failed" and "may not restore" in str(refused["error"]), refused
    # The point's definition boots the demo ISO from a path outside the ISO library: an
    # operator may not make a VM that uses it, so neither may they restore one.
    outside = run("backup.restore", {"point": point, "as_name": RESTORED}, op1)
    assert outside["state"] == "failed" and "may not boot" in str(outside["error"]), outside
    media.eject(conn, guest)  # the guest runs from RAM; with the CD-ROM empty the point is fine
    again = run("backup.create", {"vm": guest}, op1)
    assert again["state"] == "done", again
    point = str(again["result"]["id"])  # type: ignore[index]
    restored = run("backup.restore", {"point": point, "as_name": RESTORED}, op1)
    try:
        assert restored["state"] == "done", restored["error"]
        new_uuid = vms.lookup(conn, RESTORED).UUIDString()
        owner = ownership.owner_of(store, "vm", new_uuid, host=HOST)
        assert owner is not None and owner.owner_id == op1.id
    finally:
        with contextlib.suppress(KvmgrError):
            vms.delete(conn, RESTORED, force=True)
