"""The web UI in headless Chromium against the real daemon: log in, create a VM from the demo ISO
(256 MiB), see it boot in the serial console in the page, take a snapshot, clone it, delete both;
a viewer sees no action buttons and gets 403 from the API."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from kvmgr.connect import open_connection
from tests.e2e.conftest import PASSWORD, Served, screenshot
from tests.integration.conftest import remove_vm

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

#: Names carry this run's pid, so two runs at once (two worktrees) never touch each other's VMs;
#: the leftovers of a run that was killed are recognised by their pid being gone.
RUN = os.getpid()
VM = f"t-api-e2e-{RUN}"
CLONE = f"t-api-e2e-{RUN}-clone"
ISO = f"t-api-demo-{RUN}.iso"
_OURS = re.compile(r"t-api-(?:e2e|demo)-(\d+)(?:-clone|\.iso)?")


def _leftover(name: str) -> bool:
    """A name of this test from a run that no longer runs (or of this run)."""
    match = _OURS.fullmatch(name)
    if match is None:
        return False
    pid = int(match[1])
    return pid == RUN or not Path(f"/proc/{pid}").exists()


def _api(served: Served) -> httpx.Client:
    return httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {served.admin_token}"}, timeout=60
    )


def _cleanup(served: Served) -> None:
    """Remove what this test made (VMs with their kvmgr-made disks, the imported ISO), and what
    a killed run of it left."""
    with _api(served) as api:
        vms = [row["name"] for row in api.get("/api/v1/vms").json() if _leftover(row["name"])]
        for name in sorted(vms, reverse=True):  # a clone before its source
            api.delete(f"/api/v1/vms/{name}", params={"force": "true"})
        for iso in api.get("/api/v1/isos").json():
            if _leftover(iso["name"]):
                api.delete(f"/api/v1/isos/{iso['name']}")
    with open_connection() as conn:  # whatever the API could not remove
        for name in (CLONE, VM, *vms):
            remove_vm(conn, name)


@pytest.fixture(scope="module")
def imported_iso(served: Served, demo_iso: Path) -> Iterator[str]:
    _cleanup(served)
    try:
        with _api(served) as api:
            task = api.post("/api/v1/isos", json={"path": str(demo_iso), "name": ISO}).json()
            deadline = time.monotonic() + 120
            while task["state"] in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.3)
                task = api.get(f"/api/v1/tasks/{task['id']}").json()
            assert task["state"] == "done", task
        yield ISO
    finally:
        _cleanup(served)


def _login(page: Any, served: Served, name: str) -> None:
    page.goto(f"{served.url}/login")
    page.fill("#login-name", name)
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{served.url}/")


def _terminal_text(page: Any) -> str:
    # xterm's DOM renderer draws spaces as no-break spaces and pads the screen with blank rows.
    return str(page.locator(".xterm-rows").inner_text()).replace("\xa0", " ").rstrip()


def _wait_terminal(
    page: Any, pattern: str, timeout: float, poke: str | None = None, every: float = 8.0
) -> None:
    deadline = time.monotonic() + timeout
    poked = 0.0
    while time.monotonic() < deadline:
        if re.search(pattern, _terminal_text(page)):
            return
        if poke and time.monotonic() - poked >= every:
            page.keyboard.type(poke)
            poked = time.monotonic()
        page.wait_for_timeout(500)
    screenshot(page, "console-failure")
    flash = page.locator("#flash").inner_text()
    raise AssertionError(
        f"{pattern!r} not in the console (page says {flash!r}):\n{_terminal_text(page)[-800:]}"
    )


def _delete_in_page(page: Any, served: Served, name: str) -> None:
    page.goto(f"{served.url}/vms/{name}")
    page.click("#action-delete")
    page.fill("#delete-confirm-name", name)
    page.click("#delete-confirm")
    page.wait_for_url(f"{served.url}/", timeout=60_000)


def test_admin_creates_boots_snapshots_clones_and_deletes(
    browser: Any, served: Served, imported_iso: str
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("console", lambda message: print("browser:", message.type, message.text))
    try:
        _login(page, served, "admin")
        expect(page.locator("#vm-count")).to_have_text(re.compile(r"^\d+$"), timeout=30_000)
        screenshot(page, "dashboard")

        page.goto(f"{served.url}/vms/new")
        page.wait_for_selector(f"#iso option[value='{imported_iso}']", state="attached")
        page.select_option("#iso", imported_iso)
        assert "Detected:" in page.inner_text("#iso-os")
        page.fill("#vm-name", VM)
        page.fill("#vm-memory", "256M")
        page.fill("#vm-vcpus", "1")
        page.fill("#vm-disk", "1G")
        page.select_option("#vm-network", "default")
        screenshot(page, "create")
        page.click("#create-submit")
        page.wait_for_url(f"{served.url}/vms/{VM}", timeout=120_000)

        page.click("#console-open")
        page.wait_for_selector(".xterm-rows")
        page.click("#terminal")  # keystrokes go to the terminal, as for a person
        _wait_terminal(page, r"kvmgr-demo# ", timeout=180, poke="\r")
        _wait_terminal(page, r"KVMGR-READY", timeout=150, poke="kvmgr-ready.sh\r", every=10)
        screenshot(page, "vm-console")
        _second_viewer_is_told_who_holds_the_console_and_takes_over(browser, served)
        _wait_terminal(page, r"\[console closed", timeout=30)  # the first session was ended

        page.fill("#snapshot-name", "s1")
        page.click("#snapshot-form button")
        page.wait_for_selector("#snapshot-tree li[data-snapshot='s1']", timeout=180_000)

        # A running VM's disks change while they are copied: power it off first, as a person would.
        page.click("#action-off")
        expect(page.locator("#vm-state")).to_have_text("shut off", timeout=60_000)
        page.fill("#clone-name", CLONE)
        page.click("#clone-form button")
        expect(page.locator("#clone-status")).to_have_text(
            re.compile("^(done|failed.*)$"), timeout=300_000
        )
        assert page.inner_text("#clone-status") == "done", page.inner_text("#flash")
        screenshot(page, "vm-after-snapshot-and-clone")
        page.goto(f"{served.url}/")
        page.wait_for_selector(f"#vm-table a[href^='/vms/{VM}?']")  # ?host=... follows
        screenshot(page, "dashboard-with-vms")

        _viewer_sees_no_actions_and_the_api_refuses(browser, served)

        _delete_in_page(page, served, CLONE)
        _delete_in_page(page, served, VM)
        with _api(served) as api:
            names = {row["name"] for row in api.get("/api/v1/vms").json()}
            assert VM not in names and CLONE not in names
            actions = {(e["action"], e["target"]) for e in api.get("/api/v1/audit").json()}
            assert ("vm.delete", VM) in actions and ("vm.create", VM) in actions
    finally:
        context.close()


def _second_viewer_is_told_who_holds_the_console_and_takes_over(
    browser: Any, served: Served
) -> None:
    """A console in use is not taken silently: the page says who has it and offers to take
    over; taking over gives this page the console (issue 16 item 7)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        _login(page, served, "admin")
        page.goto(f"{served.url}/vms/{VM}")
        page.click("#console-open")
        expect(page.locator("#console-takeover")).to_be_visible(timeout=30_000)
        assert "admin (web" in page.inner_text("#console-busy")
        screenshot(page, "console-busy")
        page.click("#console-force")
        page.wait_for_selector(".xterm-rows")
        page.click("#terminal")
        _wait_terminal(page, r"kvmgr-demo# ", timeout=60, poke="\r")
        screenshot(page, "console-taken-over")
    finally:
        context.close()


def _viewer_sees_no_actions_and_the_api_refuses(browser: Any, served: Served) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        _login(page, served, "viewer")
        page.goto(f"{served.url}/vms/{VM}")
        page.wait_for_selector("#vm")
        assert page.locator("#vm-state").inner_text()
        assert page.locator("[data-action]").count() == 0
        assert page.locator("#action-delete").count() == 0
        assert page.locator("#console-open").count() == 0
        screenshot(page, "viewer-vm")
        csrf = page.get_attribute("meta[name='csrf-token']", "content")
        answer = page.request.post(
            f"{served.url}/api/v1/vms/{VM}/off", headers={"X-CSRF-Token": csrf or ""}
        )
        assert answer.status == 403
        token = page.request.post(
            f"{served.url}/api/v1/vms/{VM}/console-token",
            headers={"X-CSRF-Token": csrf or ""},
            data={"kind": "serial"},
        )
        assert token.status == 403
    finally:
        context.close()
