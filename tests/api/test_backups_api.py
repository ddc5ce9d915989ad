"""Backup routes: a backup runs as a task whose failure says what to fix; operators see only
their VMs' points (tests/api/test_backup_schedules_api.py), viewers nothing.

Backups of real guests are proven in tests/integration/test_backups.py; here the app runs on the
test driver, which has no backup API, and no repository is registered.
"""

from __future__ import annotations

from tests.api.conftest import As
from tests.api.test_vms import wait_task


def test_viewers_do_not_read_the_catalog(as_user: dict[str, As]) -> None:
    assert as_user["admin"].get("/api/v1/backups").json() == []
    assert as_user["op1"].get("/api/v1/backups").json() == []
    assert as_user["viewer"].get("/api/v1/backups").status_code == 403


def test_a_backup_without_a_repository_fails_saying_how_to_add_one(
    as_user: dict[str, As],
) -> None:
    answer = as_user["admin"].post("/api/v1/vms/test/backups", json={})
    assert answer.status_code == 202, answer.text
    task = wait_task(as_user["admin"], answer.json()["id"])
    assert task["state"] == "failed", task
    assert "no backup repository" in task["error"], task


def test_unknown_points_are_404(as_user: dict[str, As]) -> None:
    assert as_user["admin"].delete("/api/v1/backups/nope.20261201T000000Z").status_code == 404
    answer = as_user["admin"].post("/api/v1/backups/nope/restore", json={})
    assert answer.status_code == 404 and "not in the catalog" in answer.json()["error"]
