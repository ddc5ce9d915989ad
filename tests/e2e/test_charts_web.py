"""The charts and the addresses in headless Chromium on the real daemon, with the demo guest
running on the NAT network: the VM page's four charts fill from the server's history and grow
live from the event stream, the dashboard's host charts too, the guest's DHCP address shows with
its source on the VM page and on the dashboard; a shut-off VM's charts say why they are empty.
The server samples every 0.5 s here (KVMGR_STATS_INTERVAL), so a few seconds make many points."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from kvmgr.connect import open_connection
from tests.e2e.conftest import PASSWORD, Served, screenshot, serve
from tests.integration.conftest import remove_vm

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

VM = "t-charts-vm"
OFF = "t-charts-off"
ISO = "t-charts-demo.iso"
INTERVAL = 0.5
CHARTS = ["cpu", "memory", "disk", "network"]
MIN_POINTS = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("e2e-charts"), stats_interval=INTERVAL)


def _api(served: Served) -> httpx.Client:
    return httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {served.admin_token}"}, timeout=60
    )


def _cleanup(served: Served) -> None:
    with _api(served) as api:
        for name in (VM, OFF):
            api.delete(f"/api/v1/vms/{name}", params={"force": "true"})
        api.delete(f"/api/v1/isos/{ISO}")
    with open_connection() as conn:
        for name in (VM, OFF):
            remove_vm(conn, name)


def _wait(api: httpx.Client, answer: httpx.Response) -> None:
    assert answer.status_code == 202, answer.text
    task: dict[str, Any] = answer.json()
    deadline = time.monotonic() + 120
    while task["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        task = api.get(f"/api/v1/tasks/{task['id']}").json()
    assert task["state"] == "done", task


@pytest.fixture(scope="module")
def guest(served: Served, demo_iso: Path) -> Iterator[str]:
    """The demo guest (256 MiB, no disk) on the NAT network 'default', where dnsmasq leases it
    an address; and a shut-off VM that never ran."""
    _cleanup(served)
    try:
        with _api(served) as api:
            _wait(api, api.post("/api/v1/isos", json={"path": str(demo_iso), "name": ISO}))
            common = {"iso": ISO, "memory": "256M", "vcpus": 1, "disks": [], "graphics": "none"}
            _wait(
                api, api.post("/api/v1/vms", json={"name": VM, "networks": ["default"], **common})
            )
            body = {"name": OFF, "networks": [], "start": False, **common}
            _wait(api, api.post("/api/v1/vms", json=body))
        yield VM
    finally:
        _cleanup(served)


def _login(page: Any, served: Served, name: str = "admin") -> None:
    page.goto(f"{served.url}/login")
    page.fill("#login-name", name)
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{served.url}/")


def _points(page: Any, section: str, chart: str) -> int:
    value = page.locator(f"{section} figure[data-chart='{chart}']").get_attribute("data-points")
    return int(value or 0)


def _wait_points(page: Any, section: str, at_least: int, timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = {chart: _points(page, section, chart) for chart in CHARTS}
        if min(counts.values()) >= at_least or time.monotonic() > deadline:
            return counts
        page.wait_for_timeout(250)


def test_vm_page_charts_fill_and_grow_live_and_show_the_address(
    browser: Any, served: Served, guest: str
) -> None:
    time.sleep(MIN_POINTS * INTERVAL)  # samples taken before anyone opens the page
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.on("console", lambda message: print("browser:", message.type, message.text))
    try:
        _login(page, served, "viewer")  # a viewer reads every VM, and so its charts
        page.goto(f"{served.url}/vms/{guest}")
        expect(page.locator("#vm-charts figure.chart")).to_have_count(4)
        first = _wait_points(page, "#vm-charts", MIN_POINTS)
        assert min(first.values()) >= MIN_POINTS, first
        # live: the event stream adds a point per sample, without reloading the page
        grown = _wait_points(page, "#vm-charts", max(first.values()) + 4)
        assert min(grown.values()) >= max(first.values()) + 4, (first, grown)
        expect(page.locator("#vm-charts .charts-note")).to_contain_text("live")
        # units and axes: percent on the CPU chart, bytes per second on disk and network,
        # clock times and "now" under each
        cpu = page.locator("#vm-charts figure[data-chart='cpu']")
        expect(cpu.locator("figcaption")).to_contain_text(re.compile(r"busy \d+(\.\d)? %"))
        expect(cpu.locator("svg text", has_text=re.compile(r"^\d+ %$")).first).to_be_visible()
        net = page.locator("#vm-charts figure[data-chart='network']")
        expect(net.locator("svg text", has_text=re.compile(r"/s$")).first).to_be_visible()
        expect(net.locator("svg text", has_text="now")).to_have_count(1)
        expect(net.locator("svg text", has_text=re.compile(r"^\d\d:\d\d$"))).to_have_count(4)
        expect(page.locator("#vm-charts svg path").first).to_be_visible()
        # the guest's address from the NAT network's DHCP lease, with its source
        addresses = page.locator("#vm-addresses tbody")
        expect(addresses).to_contain_text(re.compile(r"192\.168\.122\.\d+"), timeout=120_000)
        expect(addresses).to_contain_text("lease")
        screenshot(page, "vm-charts")
        page.select_option("#vm-charts .charts-span", "300")  # the newest 5 minutes, wider
        expect(net.locator("svg text", has_text="now")).to_have_count(1)
        screenshot(page, "vm-charts-5-minutes")
    finally:
        context.close()


def test_dashboard_host_charts_and_addresses(browser: Any, served: Served, guest: str) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    try:
        _login(page, served)
        expect(page.locator("#host-charts figure.chart")).to_have_count(4)
        expect(page.locator("#host-charts h3")).to_contain_text(re.compile(r"^Host \S+: last hour"))
        counts = _wait_points(page, "#host-charts", MIN_POINTS)
        assert min(counts.values()) >= MIN_POINTS, counts
        expect(page.locator("#host-charts figure[data-chart='cpu'] figcaption")).to_contain_text(
            "all CPUs"
        )
        memory = page.locator("#host-charts figure[data-chart='memory'] figcaption")
        expect(memory).to_contain_text(re.compile(r"total \d+(\.\d)?\xa0GiB"))
        row = page.locator(f"#vm-table tr:has(a[href^='/vms/{guest}?'])")
        # columns: host, name, state, vCPUs, CPU, memory, addresses, owner
        expect(row.locator("td").nth(6)).to_have_text(
            re.compile(r"192\.168\.122\.\d+ \(lease\)"), timeout=120_000
        )
        off = page.locator(f"#vm-table tr:has(a[href^='/vms/{OFF}?'])")
        expect(off.locator("td").nth(6)).to_have_text("\u2013")
        screenshot(page, "dashboard-charts")
    finally:
        context.close()


def test_a_vm_that_never_ran_says_why_its_charts_are_empty(
    browser: Any, served: Served, guest: str
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    try:
        _login(page, served)
        page.goto(f"{served.url}/vms/{OFF}")
        expect(page.locator("#vm-charts figure.chart")).to_have_count(4)
        for chart in ("cpu", "disk", "network"):
            figure = page.locator(f"#vm-charts figure[data-chart='{chart}']")
            expect(figure.locator(".chart-empty")).to_have_text("no values: the VM is not running")
            assert _points(page, "#vm-charts", chart) == 0
        # its memory is known while it is off: the memory it will be given
        memory = page.locator("#vm-charts figure[data-chart='memory'] figcaption")
        expect(memory).to_contain_text("total 256\xa0MiB")
        expect(page.locator("#vm-addresses tbody")).to_contain_text("the VM is not running")
        screenshot(page, "vm-charts-shut-off")
    finally:
        context.close()


def test_a_host_this_server_does_not_sample_says_so(
    browser: Any, served: Served, tmp_path: Path
) -> None:
    from bench.driverfile import write_driver_file

    host = "t-charts-other"
    uri = write_driver_file(tmp_path / "charts-host.xml", 2)
    with _api(served) as api:
        assert api.post("/api/v1/hosts", json={"name": host, "uri": uri}).status_code == 201
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    try:
        _login(page, served)
        page.goto(f"{served.url}/vms/t-bench-00000?host={host}")
        note = page.locator("#vm-charts .charts-note")
        expect(note).to_contain_text(f"keeps no statistics of host {host}")
        expect(page.locator("#vm-charts .chart-empty").first).to_have_text("not sampled here")
        screenshot(page, "vm-charts-not-sampled")
    finally:
        context.close()
        with _api(served) as api:
            api.delete(f"/api/v1/hosts/{host}", params={"force": "true"})
