"""The hosts page and the dashboard's host column and filter, in headless Chromium: the server's
own daemon plus a test:/// host registered through the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.driverfile import write_driver_file
from playwright.sync_api import expect

from tests.e2e.conftest import PASSWORD, Served, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

HOST = "t-hosts-web"


def _api(served: Served) -> httpx.Client:
    return httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {served.admin_token}"}, timeout=60
    )


@pytest.fixture
def fleet(served: Served, tmp_path: Path) -> Iterator[str]:
    uri = write_driver_file(tmp_path / "web-host.xml", 3)
    with _api(served) as api:
        added = api.post("/api/v1/hosts", json={"name": HOST, "uri": uri, "labels": {"rack": "r9"}})
        assert added.status_code == 201, added.text
    try:
        yield uri
    finally:
        with _api(served) as api:
            api.delete(f"/api/v1/hosts/{HOST}", params={"force": "true"})


def _login(page: Any, served: Served) -> None:
    page.goto(f"{served.url}/login")
    page.fill("#login-name", "admin")
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{served.url}/")


def test_hosts_page_and_dashboard_host_filter(browser: Any, served: Served, fleet: str) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        _login(page, served)
        page.goto(f"{served.url}/hosts")
        row = page.locator("#host-table tbody tr", has_text=HOST)
        expect(row).to_contain_text("up")
        expect(row).to_contain_text("rack=r9")
        expect(row).to_contain_text("1 running / 3")
        expect(page.locator("#host-table tbody tr")).to_have_count(2)  # and the server's own
        screenshot(page, "hosts-page")

        page.goto(f"{served.url}/")
        expect(page.locator("#host-filter option", has_text=HOST)).to_have_count(1)
        # all hosts: the test host's VMs with their host named, next to the daemon's own
        expect(page.locator("#vm-table tbody tr", has_text="t-bench-00002")).to_contain_text(HOST)
        page.select_option("#host-filter", HOST)
        expect(page.locator("#vm-table tbody tr")).to_have_count(3)
        screenshot(page, "dashboard-host-filter")
        # a VM of that host opens on that host
        page.click("#vm-table a:text('t-bench-00001')")
        page.wait_for_url(f"**/vms/t-bench-00001?host={HOST}")
        expect(page.locator("body")).to_contain_text("t-bench-00001")
    finally:
        context.close()
