"""Backups in headless Chromium against the real daemon: on a real demo guest's VM page the
admin backs up now, sees the point in the VM's list and restores it into a new VM (which then
exists with its disk); a backup of a VM that is gone fails; the backups page shows the VM's last
good point and that failure, and takes a schedule and a retention policy through its forms."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from kvmgr.connect import open_connection
from kvmgr.control.backups import Backups
from kvmgr.errors import KvmgrError
from kvmgr.services import vms
from kvmgr.services.create import DiskRequest, VMSpec, create_vm
from kvmgr.units import MIB
from tests.e2e.conftest import PASSWORD, Served, screenshot
from tests.integration.conftest import remove_vm

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

VM = "t-web-bk-vm"
RESTORED = "t-web-bk-restored"
GONE = "t-web-bk-gone"


def _api(served: Served) -> httpx.Client:
    return httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {served.admin_token}"}, timeout=60
    )


def _remove() -> None:
    with open_connection() as conn:
        for name in (RESTORED, VM):
            with contextlib.suppress(KvmgrError):
                vms.delete(conn, name, force=True)
            remove_vm(conn, name)


@pytest.fixture(scope="module")
def guest(
    served: Served, demo_iso: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    _remove()
    Backups(served.app.state.ctx.plane).add_repo(
        "e2e", str(tmp_path_factory.mktemp("e2e-bk") / "repo")
    )
    with open_connection() as conn:
        spec = VMSpec(
            VM,
            iso=str(demo_iso),
            memory=256 * MIB,
            vcpus=1,
            disks=[DiskRequest(size=32 * MIB)],
            graphics="none",
        )
        create_vm(conn, spec)
    try:
        yield VM
    finally:
        _remove()


def _login(page: Any, served: Served, name: str) -> None:
    page.goto(f"{served.url}/login")
    page.fill("#login-name", name)
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{served.url}/")


def test_vm_page_backs_up_and_restores_and_the_backups_page_shows_it(
    browser: Any, served: Served, guest: str
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    _login(page, served, "admin")
    page.goto(f"{served.url}/vms/{guest}")
    table = page.locator("#vm-backup-table tbody")
    expect(table).to_contain_text("none")
    page.click("#vm-backup-now")
    expect(page.locator("#vm-backup-status")).to_have_text("backing up: done", timeout=120_000)
    row = table.locator("tr").first
    expect(row).to_contain_text(f"{guest}.")
    expect(row).to_contain_text("full")
    expect(row).to_contain_text("good")
    screenshot(page, "vm-backups")

    row.get_by_role("button", name="restore…").click()
    page.fill("#restore-name", RESTORED)
    page.click("#restore-ok")
    expect(page.locator("#vm-backup-status")).to_have_text(
        f"restored as {RESTORED}", timeout=120_000
    )
    screenshot(page, "vm-backups-restored")
    with _api(served) as api:
        restored = api.get(f"/api/v1/vms/{RESTORED}")
        assert restored.status_code == 200, restored.text
        assert len([d for d in restored.json()["disks"] if d["device"] == "disk"]) == 1
        # A backup of a VM that is gone: a failure the backups page must show.
        task = api.post(f"/api/v1/vms/{GONE}/backups", json={}).json()
        while task["state"] in ("queued", "running"):
            task = api.get(f"/api/v1/tasks/{task['id']}").json()
        assert task["state"] == "failed", task

    page.goto(f"{served.url}/backups")
    overview = page.locator("#backup-overview tbody")
    expect(overview.locator("tr", has_text=guest)).to_contain_text("full")
    failures = page.locator("#backup-failures tbody")
    expect(failures.locator("tr", has_text=GONE)).to_contain_text("does not exist")
    page.fill("#schedule-vm", guest)
    page.fill("#schedule-every", "1d")
    page.fill("#schedule-at", "02:00")
    page.fill("#schedule-tz", "Europe/Paris")
    page.click("#schedule-form button[type=submit]")
    schedule = page.locator("#backup-schedules tbody tr", has_text=guest)
    expect(schedule).to_contain_text("02:00 Europe/Paris")
    expect(schedule).to_contain_text("not yet")
    page.fill("#schedule-vm", guest)
    page.fill("#schedule-every", "2h")
    page.fill("#schedule-at", "02:00")
    page.fill("#schedule-tz", "")
    page.click("#schedule-form button[type=submit]")
    expect(page.locator("#schedule-error")).to_contain_text("whole days")
    page.fill("#policy-vm", guest)
    page.fill("#policy-last", "3")
    page.click("#policy-form button[type=submit]")
    expect(page.locator("#backup-policies tbody tr", has_text=guest)).to_contain_text("3")
    screenshot(page, "backups-page")
    schedule.get_by_role("button", name="remove").click()
    expect(page.locator("#backup-schedules tbody")).to_contain_text("none")
    page.close()


def test_a_viewer_sees_no_backups(browser: Any, served: Served, guest: str) -> None:
    page = browser.new_page()
    _login(page, served, "viewer")
    page.goto(f"{served.url}/vms/{guest}")
    expect(page.locator("#vm-backups")).to_have_count(0)
    expect(page.locator("nav")).not_to_contain_text("Backups")
    page.close()
