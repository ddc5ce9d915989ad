"""Backup schedules on a fake clock: windows (in UTC, and in a time zone across both DST
changes), the first run, missed windows (one run, not one per window), a slow run delaying the
next, exactly one run per window with two workers racing on SQLite and on PostgreSQL, and a
real worker whose scheduled backup fails (test driver: it has no backup API), recorded in the
catalog, the run, the audit log and the metrics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from kvmgr.connect.connection import open_connection
from kvmgr.control import backup_policies, backup_schedules, backup_windows, tasks
from kvmgr.control.backup_schedule_models import BackupRun, BackupSchedule
from kvmgr.control.backup_schedules import Schedules, fire_due
from kvmgr.control.backup_windows import due_window, next_window, parse_at, parse_every, parse_tz
from kvmgr.control.backups import Backups
from kvmgr.control.plane import ControlPlane
from kvmgr.control.worker import Worker
from kvmgr.errors import AlreadyExists, InvalidInput, NotFound
from kvmgr.services.backup.retention import Policy
from kvmgr.store import audit
from kvmgr.store.db import Store
from kvmgr.store.models import Role, Task
from kvmgr.store.users import Principal
from tests.api.test_postgres import pg_url
from tests.control.conftest import principals, wait_for

__all__ = ["pg_url"]

ROOT = Principal(id=0, name="cli:root", role=Role.admin, group=None)
DAY0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def at(days: float = 0, hours: float = 0, seconds: float = 0) -> datetime:
    return DAY0 + timedelta(days=days, hours=hours, seconds=seconds)


@pytest.fixture
def conn() -> Iterator[object]:
    connection = open_connection("test:///default")
    yield connection
    connection.close()


def _schedules(store: Store, conn: object, tmp_path: Path) -> Schedules:
    plane = ControlPlane(store, "test:sched", lambda _host: conn)  # type: ignore[arg-type,return-value]
    Backups(plane).add_repo("main", str(tmp_path / "repo"))
    return Schedules(plane)


def _runs(store: Store) -> list[tuple[int, datetime, str]]:
    with store.session() as session:
        rows = session.scalars(select(BackupRun).order_by(BackupRun.window))
        return [(row.schedule_id, row.window.replace(tzinfo=UTC), row.state) for row in rows]


def _end_runs(store: Store, state: str = "done") -> None:
    with store.session() as session:
        session.execute(update(BackupRun).values(state=state))
        session.execute(update(Task).values(state="done"))


def test_intervals_times_and_their_hints() -> None:
    assert [parse_every(text) for text in ("30s", "15m", "6h", "1d", "1w", "1d12h")] == [
        30,
        900,
        21600,
        86400,
        604800,
        129600,
    ]
    for bad in ("", "1", "d", "1y", "-1d", "5s", "400d"):
        with pytest.raises(InvalidInput) as caught:
            parse_every(bad)
        assert caught.value.hint
    assert parse_at("02:00") == 7200 and parse_at("23:59") == 86340
    for bad in ("24:00", "2", "02:60", "two"):
        with pytest.raises(InvalidInput):
            parse_at(bad)
    with pytest.raises(InvalidInput, match="whole days"):
        backup_windows.check_window(3600, 7200)


def test_windows_are_the_same_for_every_worker() -> None:
    day = parse_every("1d")
    assert due_window(day, 7200, at(hours=-8, seconds=-1)) == datetime(2026, 11, 30, 2, tzinfo=UTC)
    assert due_window(day, 7200, at(hours=-8)) == datetime(2026, 12, 1, 2, tzinfo=UTC)
    assert due_window(6 * 3600, None, at()) == datetime(2026, 12, 1, 6, tzinfo=UTC)
    assert next_window(day, 7200, at()) == datetime(2026, 12, 2, 2, tzinfo=UTC)


def test_add_list_remove_and_their_errors(store: Store, conn: object, tmp_path: Path) -> None:
    face = _schedules(store, conn, tmp_path)
    made = face.add("local", "test", every="1d", at="02:00", who=ROOT, now=at())
    assert (made["vm"], made["every"], made["at"]) == ("test", "1d", "02:00")
    assert made["next"] == "2026-12-02T02:00:00+00:00"
    with pytest.raises(AlreadyExists) as exists:
        face.add("local", "test", every="6h", who=ROOT, now=at())
    assert "remove it first" in str(exists.value.hint)
    with pytest.raises(NotFound, match="does not exist") as missing:
        face.add("local", "no-such-vm", every="1d", who=ROOT)
    assert "--all" in str(missing.value.hint)
    with pytest.raises(NotFound, match="not registered"):
        face.add("local", "test", every="1d", repo="elsewhere", who=ROOT)
    face.add("local", None, every="12h", who=ROOT, now=at())
    assert [row["vm"] for row in face.all(now=at())] == ["test", "--all"]
    face.remove("local", "test")
    with pytest.raises(NotFound) as gone:
        face.remove("local", "test")
    assert "schedule list" in str(gone.value.hint)
    assert [row["vm"] for row in face.all()] == ["--all"]


PARIS = "Europe/Paris"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_time_zones_and_their_hints() -> None:
    assert parse_tz("Europe/Paris") == PARIS and parse_tz(" UTC ") == "UTC"
    for bad in ("Europe/Pari", "Mars/Olympus", "../etc/passwd", ""):
        with pytest.raises(InvalidInput, match="not a time zone") as caught:
            parse_tz(bad)
        assert caught.value.hint and "Europe/Paris" in caught.value.hint
    with pytest.raises(InvalidInput) as near:
        parse_tz("Europe/Pari")
    assert "did you mean Europe/Paris" in str(near.value.hint)
    with pytest.raises(InvalidInput, match="whole days"):
        backup_windows.check_window(6 * 3600, None, PARIS)


def test_windows_in_a_zone_are_its_wall_time() -> None:
    day = parse_every("1d")
    # winter: 02:00 in Paris is 01:00 UTC; summer: 00:00 UTC
    assert due_window(day, 7200, at(), PARIS) == utc(2026, 12, 1, 1)
    assert next_window(day, 7200, at(), PARIS) == utc(2026, 12, 2, 1)
    assert due_window(day, 7200, utc(2026, 7, 1, 0, 0), PARIS) == utc(2026, 7, 1, 0)
    assert due_window(day, 7200, utc(2026, 7, 1, 0, 0) - timedelta(seconds=1), PARIS) == utc(
        2026, 6, 30, 0
    )
    # every second local day, counted from 1970-01-01 as in UTC
    two = parse_every("2d")
    assert due_window(two, 7200, at(days=1), PARIS) == utc(2026, 12, 1, 1)  # not Dec 2
    assert due_window(two, 7200, at(days=1), "UTC") == due_window(two, 7200, at(days=1))
    assert due_window(two, 7200, at(days=1)) == utc(2026, 12, 1, 2)
    # a zone east of UTC: 01:00 in Tokyo is the previous UTC day
    assert due_window(day, 3600, at(), "Asia/Tokyo") == utc(2026, 11, 30, 16)


def _fire_through(store: Store, start: datetime, end: datetime) -> list[datetime]:
    """Fire every 15 minutes from ``start`` to ``end`` (each run ends at once); the windows."""
    moment = start
    while moment <= end:
        fire_due(store, moment)
        _end_runs(store)
        moment += timedelta(minutes=15)
    return [window for _, window, _ in _runs(store)]


def test_spring_gap_runs_at_the_next_valid_time(store: Store, conn: object, tmp_path: Path) -> None:
    # 2026-03-29: clocks in Paris go from 02:00 to 03:00, so 02:30 does not exist that night
    face = _schedules(store, conn, tmp_path)
    face.add("local", "test", every="1d", at="02:30", tz=PARIS, who=ROOT,
             now=utc(2026, 3, 27, 12))  # fmt: skip
    assert _fire_through(store, utc(2026, 3, 27, 12), utc(2026, 3, 30, 12)) == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST: the first valid time after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_autumn_repeated_hour_runs_once(store: Store, conn: object, tmp_path: Path) -> None:
    # 2026-10-25: clocks in Paris go from 03:00 back to 02:00, so 02:30 happens twice
    face = _schedules(store, conn, tmp_path)
    face.add("local", "test", every="1d", at="02:30", tz=PARIS, who=ROOT,
             now=utc(2026, 10, 23, 12))  # fmt: skip
    assert _fire_through(store, utc(2026, 10, 23, 12), utc(2026, 10, 26, 12)) == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # the first 02:30 (CEST); the second (01:30 UTC) is not one
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]


def test_zone_is_stored_listed_and_checked(store: Store, conn: object, tmp_path: Path) -> None:
    face = _schedules(store, conn, tmp_path)
    with pytest.raises(InvalidInput, match="not a time zone"):
        face.add("local", "test", every="1d", at="02:00", tz="Europe/Pariss", who=ROOT)
    assert face.all() == []  # nothing stored
    made = face.add("local", "test", every="1d", at="02:00", tz=PARIS, who=ROOT, now=at())
    assert (made["at"], made["tz"]) == ("02:00", PARIS)
    assert made["next"] == "2026-12-02T02:00:00+01:00"  # shown in the schedule's zone
    with store.session() as session:
        assert session.scalars(select(BackupSchedule.tz)).one() == PARIS
    face.add("local", None, every="1d", at="02:00", who=ROOT, now=at())
    assert [row["tz"] for row in face.all(now=at())] == [PARIS, "UTC"]
    assert face.all(now=at())[1]["next"] == "2026-12-02T02:00:00+00:00"


def test_first_run_is_the_next_window_and_a_missed_one_runs_once(
    store: Store, conn: object, tmp_path: Path
) -> None:
    face = _schedules(store, conn, tmp_path)
    face.add("local", "test", every="1d", at="02:00", who=ROOT, now=at())
    assert fire_due(store, at()) == []  # 02:00 today passed before the schedule existed
    assert fire_due(store, at(hours=15, seconds=59)) == []  # 01:59:59 tomorrow
    assert len(fire_due(store, at(hours=16))) == 1  # 02:00 tomorrow
    assert fire_due(store, at(hours=16, seconds=5)) == []  # fired already
    _end_runs(store)
    # No worker ran for four days: the newest window runs, once.
    assert len(fire_due(store, at(days=5, hours=2))) == 1
    assert fire_due(store, at(days=5, hours=3)) == []
    assert [window for _, window, _ in _runs(store)] == [
        datetime(2026, 12, 2, 2, tzinfo=UTC),
        datetime(2026, 12, 6, 2, tzinfo=UTC),
    ]


def test_a_run_still_going_delays_the_next_window(
    store: Store, conn: object, tmp_path: Path
) -> None:
    face = _schedules(store, conn, tmp_path)
    face.add("local", "test", every="1h", who=ROOT, now=at())
    assert len(fire_due(store, at(hours=1))) == 1
    assert fire_due(store, at(hours=2)) == []  # the 11:00 run is still queued
    _end_runs(store)
    assert len(fire_due(store, at(hours=2, seconds=1))) == 1  # 12:00, at once after it ended
    assert len(_runs(store)) == 2


def test_a_run_whose_task_was_interrupted_is_settled(
    store: Store, conn: object, tmp_path: Path
) -> None:
    face = _schedules(store, conn, tmp_path)
    face.add("local", "test", every="1h", who=ROOT, now=at())
    fire_due(store, at(hours=1))
    with store.session() as session:
        session.execute(update(Task).values(state="interrupted", error="its worker stopped"))
    assert len(fire_due(store, at(hours=2))) == 1  # settled, so not busy any more
    assert [state for _, _, state in _runs(store)] == ["interrupted", "queued"]
    assert face.runs()[1]["error"] == "its worker stopped"


def _race(urls: str, conn: object, tmp_path: Path, windows: int) -> None:
    """Two 'workers' (their own engines, so their own database connections) fire the same
    windows at the same instants; every window must be queued exactly once."""
    stores = [Store(urls), Store(urls)]
    try:
        face = _schedules(stores[0], conn, tmp_path)
        face.add("local", "test", every="1m", who=ROOT, now=at())
        face.add("local", None, every="1m", who=ROOT, now=at())
        barrier = threading.Barrier(2)
        fired: list[list[int]] = [[], []]
        errors: list[BaseException] = []

        def work(number: int) -> None:
            try:
                for window in range(1, windows + 1):
                    barrier.wait(10)
                    fired[number] += fire_due(stores[number], at(seconds=60 * window))
                    barrier.wait(10)
                    if number == 0:
                        _end_runs(stores[0])
            except BaseException as err:  # the assertion below names it
                errors.append(err)
                barrier.abort()

        threads = [threading.Thread(target=work, args=(number,)) for number in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        runs = _runs(stores[0])
        assert len(runs) == 2 * windows
        assert len({(schedule, window) for schedule, window, _ in runs}) == 2 * windows
        assert sorted(fired[0] + fired[1]) == sorted(set(fired[0] + fired[1]))
        with stores[0].session() as session:
            queued = session.scalar(
                select(func.count()).select_from(Task).where(Task.kind == "backup.scheduled")
            )
        assert queued == 2 * windows
    finally:
        for one in stores:
            one.dispose()


def test_two_workers_fire_each_window_once_on_sqlite(conn: object, tmp_path: Path) -> None:
    _race(f"sqlite:///{tmp_path / 'race.db'}", conn, tmp_path, windows=25)


@pytest.mark.postgres
def test_two_workers_fire_each_window_once_on_postgres(
    pg_url: str, conn: object, tmp_path: Path
) -> None:
    store = Store(pg_url)
    with store.session() as session:  # the module's cluster is shared: start from no schedules
        session.query(BackupSchedule).delete()
        session.query(Task).filter(Task.kind == "backup.scheduled").delete()
        session.execute(update(BackupRun).values(state="done"))
    store.dispose()
    _race(pg_url, conn, tmp_path, windows=25)


def test_a_failing_scheduled_backup_is_recorded(store: Store, conn: object, tmp_path: Path) -> None:
    """A real worker fires a due window and runs it; the test driver has no backup API, so the
    backup fails: the run, the catalog, the audit log and /metrics all say so."""
    people = principals(store)
    face = _schedules(store, conn, tmp_path)
    now = datetime.now(UTC)
    made = face.add("local", "test", every="1h", who=people["boss"], now=now - timedelta(hours=1))
    worker = Worker(store, lambda _host: conn, poll=0.05, beat=0.2)  # type: ignore[arg-type,return-value]
    worker.start()  # fires the due window at once: a missed one
    try:
        wait_for(lambda: face.runs() and face.runs()[0]["state"] == "failed", 30, "the run")
    finally:
        worker.stop(10)
    run = face.runs()[0]
    assert run["schedule"] == made["id"] and run["duration"] >= 0 and run["error"]
    assert len(run["points"]) == 1 and run["points"][0].endswith(".failed")
    listed = Backups(ControlPlane(store, "t", lambda _h: conn)).points("test")  # type: ignore[arg-type,return-value]
    assert [(row["id"], row["state"]) for row in listed] == [(run["points"][0], "failed")]
    with store.session() as session:
        entries = [
            (row.user, row.action, row.target, row.result)
            for row in audit.entries(session, target="test")
        ]
    assert (f"schedule:{made['id']}", "backup.scheduled", "test", "error") in entries
    lines = backup_schedules.metric_lines(store)
    assert (
        f'kvmgr_backup_schedule_last_run_failed{{schedule="{made["id"]}",host="local",vm="test"}} 1'
        in lines
    )
    assert face.all()[0]["last_run"] == "failed"
    with store.session() as session:
        task = session.get(Task, run["task"])
        assert (
            task is not None
            and task.state == "failed"
            and "scheduled backup failed" in str(task.error)
        )


def test_a_schedule_of_a_user_no_longer_admin_does_not_run(
    store: Store, conn: object, tmp_path: Path
) -> None:
    people = principals(store)
    face = _schedules(store, conn, tmp_path)
    face.add(
        "local", "test", every="1h", who=people["boss"], now=datetime.now(UTC) - timedelta(hours=1)
    )
    with store.session() as session:
        session.execute(update(backup_schedules.User).values(role="operator"))
    worker = Worker(store, lambda _host: conn, poll=0.05, beat=0.2)  # type: ignore[arg-type,return-value]
    worker.start()
    try:
        wait_for(lambda: face.runs() and face.runs()[0]["state"] == "failed", 30, "the run")
    finally:
        worker.stop(10)
    assert "no longer an admin" in str(face.runs()[0]["error"])
    assert face.runs()[0]["points"] == []


def test_stored_policies(store: Store) -> None:
    assert backup_policies.get_policy(store, "web") is None
    backup_policies.set_policy(store, "web", Policy(keep_last=3), by="ann")
    backup_policies.set_policy(store, "web", Policy(keep_last=2, keep_daily=7), by="ann")
    assert backup_policies.get_policy(store, "web") == Policy(2, 7, 0)
    assert [row["vm"] for row in backup_policies.policies(store)] == ["web"]
    with pytest.raises(InvalidInput, match="keeps nothing"):
        Policy()
    backup_policies.remove_policy(store, "web")
    with pytest.raises(NotFound):
        backup_policies.remove_policy(store, "web")


def test_system_kinds_only_for_tasks_without_a_user() -> None:
    tasks.load_kinds()
    assert tasks.system_principal("backup.scheduled", None, "schedule:1") is not None
    assert tasks.system_principal("backup.scheduled", 7, "ann") is None  # a user's: their rights
    assert tasks.system_principal("backup.create", None, "cli:x") is None


def test_two_real_workers_run_a_due_window_once(tmp_path: Path, conn: object) -> None:
    """Two Worker objects (their own engines) start together on one SQLite file with a window
    due (missed): one run, one task, run once."""
    url = f"sqlite:///{tmp_path / 'two.db'}"
    stores = [Store(url), Store(url)]
    face = _schedules(stores[0], conn, tmp_path)
    face.add("local", "test", every="1h", who=ROOT, now=datetime.now(UTC) - timedelta(hours=3))
    workers = [
        Worker(one, lambda _host: conn, poll=0.05, beat=0.1)  # type: ignore[arg-type,return-value]
        for one in stores
    ]
    threads = [threading.Thread(target=worker.start) for worker in workers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        wait_for(lambda: bool(face.runs()) and face.runs()[0]["state"] == "failed", 30, "the run")
        time.sleep(1.0)  # several more beats of both workers: nothing more may fire
        assert len(face.runs()) == 1
        with stores[0].session() as session:
            kinds = session.scalars(select(Task.kind).where(Task.kind == "backup.scheduled")).all()
        assert len(kinds) == 1
        assert sum(worker.ran for worker in workers) == 1
    finally:
        for worker in workers:
            worker.stop(10)
        for one in stores:
            one.dispose()


def test_cli_takes_and_lists_the_zone(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from kvmgr.cli.common import state
    from kvmgr.cli.main import app

    def kvmgr(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["--connect", "test:///default", *args])
        return result.exit_code, result.output

    try:
        assert kvmgr("backup", "repo", "add", "main", str(tmp_path / "repo"))[0] == 0
        code, out = kvmgr("backup", "schedule", "test", "--every", "1d", "--at", "02:00",
                          "--tz", "Europe/Pariss")  # fmt: skip
        assert code != 0 and "did you mean Europe/Paris" in " ".join(out.split())
        code, out = kvmgr("backup", "schedule", "test", "--every", "1d", "--at", "02:00",
                          "--tz", PARIS)  # fmt: skip
        assert code == 0, out
        code, out = kvmgr("backup", "schedule", "list", "-o", "json")
        assert code == 0, out
        [row] = json.loads(out)
        assert (row["at"], row["tz"]) == ("02:00", PARIS)
        assert row["next"].endswith(("T02:00:00+01:00", "T02:00:00+02:00"))
        code, out = kvmgr("backup", "schedule", "list")
        assert PARIS in out
    finally:
        state.close()  # CliRunner bypasses run(): drop the cached connection and plane
