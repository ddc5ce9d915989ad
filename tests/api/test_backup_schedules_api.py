"""Schedules, policies and who sees which backup points, over REST (test driver: no backup API,
so points are entered in the catalog directly, with the owner records a backup copies).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI

from kvmgr.control.backup_models import FAILED, GOOD, BackupPoint
from kvmgr.control.backups import Backups
from kvmgr.store import ownership
from kvmgr.store.models import User
from tests.api.conftest import As


@pytest.fixture(scope="module")
def catalog(app: FastAPI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A repository, a point of op1's VM (team-a), one of an admin's VM, a failed run of op1's."""
    ctx = app.state.ctx
    Backups(ctx.plane).add_repo("main", str(tmp_path_factory.mktemp("repo") / "r"))
    store = ctx.store
    points = {"mine": "t-op1vm.20261201T010000Z", "theirs": "t-admvm.20261201T010000Z"}
    with store.session() as session:
        op1 = session.query(User).filter_by(name="op1").one()
        for key, vm, uuid in (("mine", "t-op1vm", "u1"), ("theirs", "t-admvm", "u2")):
            session.add(
                BackupPoint(
                    id=points[key],
                    repo="main",
                    vm_name=vm,
                    vm_uuid=uuid,
                    host="local",
                    kind="full",
                    state=GOOD,
                    created=datetime(2026, 12, 1, 1, tzinfo=UTC),
                )
            )
        session.add(
            BackupPoint(
                id="t-op1vm.20261201T020000Z.failed",
                repo="main",
                vm_name="t-op1vm",
                vm_uuid="u1",
                host="local",
                kind="",
                state=FAILED,
                created=datetime(2026, 12, 1, 2, tzinfo=UTC),
                error="disk vanished",
            )
        )
        ownership.record(session, "backup", points["mine"], op1.id, "team-a", host="local")
        ownership.record(session, "vm", "u1", op1.id, "team-a", host="local")
    return points


def test_operators_see_and_restore_only_their_vms_points(
    as_user: dict[str, As], catalog: dict[str, str]
) -> None:
    ids = {row["id"] for row in as_user["op2"].get("/api/v1/backups").json()}  # op1's group mate
    assert ids == {catalog["mine"], "t-op1vm.20261201T020000Z.failed"}
    assert as_user["op3"].get("/api/v1/backups").json() == []  # another group
    assert len(as_user["admin"].get("/api/v1/backups").json()) == 3
    assert as_user["viewer"].get("/api/v1/backups").status_code == 403
    refused = as_user["op1"].post(f"/api/v1/backups/{catalog['theirs']}/restore", json={})
    assert refused.status_code == 403 and "may not restore" in refused.json()["error"]
    # op1's own point passes the check (the task then fails: the point is not on disk).
    assert (
        as_user["op1"].post(f"/api/v1/backups/{catalog['mine']}/restore", json={}).status_code
        == 202
    )
    overview = as_user["op1"].get("/api/v1/backups/overview").json()
    assert [(o["vm"], o["last_good"]["id"], o["failures_since"]) for o in overview] == [
        ("t-op1vm", catalog["mine"], 1)
    ]
    assert overview[0]["last_failure"]["error"] == "disk vanished"


def test_operators_back_up_into_the_default_repository_only(as_user: dict[str, As]) -> None:
    refused = as_user["op1"].post("/api/v1/vms/test/backups", json={})  # an admin's VM
    assert refused.status_code == 403 and "may not" in refused.json()["error"]


def test_schedules_over_rest(as_user: dict[str, As], catalog: dict[str, str]) -> None:
    admin = as_user["admin"]
    made = admin.post("/api/v1/backup-schedules", json={"vm": "test", "every": "1d", "at": "02:00"})
    assert made.status_code == 201, made.text
    assert made.json()["next"].endswith("T02:00:00+00:00")
    bad = admin.post("/api/v1/backup-schedules", json={"vm": "test", "every": "1 day"})
    assert bad.status_code == 422 and "a number and a unit" in bad.json()["hint"]
    twice = admin.post("/api/v1/backup-schedules", json={"vm": "test", "every": "6h"})
    assert twice.status_code == 409 and "remove it first" in twice.json()["hint"]
    missing = admin.post("/api/v1/backup-schedules", json={"vm": "t-none", "every": "6h"})
    assert missing.status_code == 404
    every = admin.post("/api/v1/backup-schedules", json={"every": "12h"})
    assert every.status_code == 201 and every.json()["vm"] == "--all"
    listed = admin.get("/api/v1/backup-schedules").json()
    assert [row["vm"] for row in listed] == ["test", "--all"]
    assert admin.get(f"/api/v1/backup-schedules/{made.json()['id']}/runs").json() == []
    assert as_user["op1"].get("/api/v1/backup-schedules").status_code == 403
    metrics = admin.get("/metrics").text
    assert "kvmgr_backup_schedule_next_window_timestamp_seconds{schedule=" in metrics
    for row in listed:
        assert admin.delete(f"/api/v1/backup-schedules/{row['id']}").status_code == 200
    assert admin.delete(f"/api/v1/backup-schedules/{made.json()['id']}").status_code == 404
    actions = {entry["action"] for entry in admin.get("/api/v1/audit").json()}
    assert {"backup.schedule.add", "backup.schedule.remove"} <= actions


def test_schedule_time_zone_over_rest(as_user: dict[str, As], catalog: dict[str, str]) -> None:
    admin = as_user["admin"]
    body = {"vm": "test", "every": "1d", "at": "02:00", "tz": "Europe/Paris"}
    made = admin.post("/api/v1/backup-schedules", json=body)
    assert made.status_code == 201, made.text
    assert made.json()["tz"] == "Europe/Paris"
    assert made.json()["next"].endswith("T02:00:00+01:00")  # December: CET
    assert admin.get("/api/v1/backup-schedules").json()[0]["tz"] == "Europe/Paris"
    admin.delete(f"/api/v1/backup-schedules/{made.json()['id']}")
    bad = admin.post("/api/v1/backup-schedules", json={**body, "tz": "Europe/Pariss"})
    assert bad.status_code == 422 and "Europe/Paris" in bad.json()["hint"]


def test_policies_over_rest(as_user: dict[str, As]) -> None:
    admin = as_user["admin"]
    stored = admin.request(
        "PUT", "/api/v1/vms/test/backup-policy", json={"keep_last": 3, "keep_daily": 7}
    )
    assert stored.status_code == 200 and stored.json()["keep_daily"] == 7
    nothing = admin.request("PUT", "/api/v1/vms/test/backup-policy", json={})
    assert nothing.status_code == 422 and "--keep-last" in nothing.json()["hint"]
    assert [row["vm"] for row in admin.get("/api/v1/backup-policies").json()] == ["test"]
    assert (
        as_user["op1"]
        .request("PUT", "/api/v1/vms/test/backup-policy", json={"keep_last": 1})
        .status_code
        == 403
    )
    assert admin.delete("/api/v1/vms/test/backup-policy").status_code == 200
    assert admin.delete("/api/v1/vms/test/backup-policy").status_code == 404


def test_pages_show_the_backups(as_user: dict[str, As], catalog: dict[str, str]) -> None:
    page = as_user["op1"].get("/backups")
    assert page.status_code == 200 and 'id="backup-overview"' in page.text
    assert 'id="backup-schedules"' not in page.text  # schedules are admins'
    assert 'id="backup-schedules"' in as_user["admin"].get("/backups").text
    vm_page = as_user["admin"].get("/vms/test")
    assert 'id="vm-backups"' in vm_page.text and "/static/backups.js" in vm_page.text
    assert 'id="vm-backups"' not in as_user["viewer"].get("/vms/test").text
    assert (Path(__file__).parents[2] / "src/kvmgr/web/static/backups.js").is_file()
