"""Migration and evacuation from the web UI, in headless Chromium against ``kvmgr serve`` with
the lab's hosts registered: a running demo guest migrated from its page arrives on the other
host with the job's numbers shown while it ran, a refused host shows its reason, a slow
(1 MiB/s) migration cancelled from the page leaves the VM on its source, and the hosts page
evacuates a host (the plan first, then each VM's progress) into maintenance.

It lives in tests/lab, not tests/e2e: the ``lab`` fixture is session-wide in tests/lab's
conftest (a second definition imported elsewhere would build a second lab), while the e2e side
is two importable pieces (the ``browser`` fixture and :func:`tests.e2e.conftest.serve`).  The
conftest marks it ``lab`` and ``integration``; ``e2e`` is added here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from playwright.sync_api import expect

from kvmgr.api.settings import Settings
from kvmgr.connect import Connection
from kvmgr.control.hosts import HostRegistry, close_connections
from kvmgr.host import lab as labs
from kvmgr.services import storage
from kvmgr.store.db import Store
from kvmgr.units import MIB
from tests.e2e import conftest as e2e
from tests.e2e.conftest import PASSWORD, Served, serve
from tests.integration.guest import GuestShell, demo_domain
from tests.lab.conftest import purge_prefix
from tests.lab.test_migration import POOL, _shut_off_domain, _volumes

pytestmark = [pytest.mark.e2e]

browser = e2e.browser  # the e2e fixture (headless Debian Chromium), used here as it is
PREFIX = "lab-mv-web"
NONE = "\u2013"  # what the page shows for a figure it has no sample of
VM = f"{PREFIX}-live"


@pytest.fixture(scope="module")
def web(
    lab: labs.Lab, lab_tls: list[Connection], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """``kvmgr serve`` on lab host 1 with h1..h4 registered, h3 in maintenance (the refused
    host).  The hosts go into the store before the server starts, so that its own URI is h1."""
    purge_prefix(lab_tls, PREFIX)
    state = tmp_path_factory.mktemp("web-migrate")
    uri = lab.tls_uri(lab.host(1))
    store = Store(Settings(state_dir=state, uri=uri, secret_key="e" * 40).database_url)
    registry = HostRegistry(store)
    for host in lab.hosts:
        registry.add(f"h{host.index}", lab.tls_uri(host))
    registry.set("h3", maintenance=True)
    store.dispose()
    try:
        yield from serve(state, uri=uri)
    finally:
        close_connections()
        purge_prefix(lab_tls, PREFIX)


@pytest.fixture(scope="module")
def guest(web: Served, lab_tls: list[Connection], demo_iso: Path) -> str:
    """A running (booted) demo guest with a local qcow2 disk on h1."""
    src = lab_tls[0]
    ref = storage.create_volume(src, POOL, f"{VM}.qcow2", 64 * MIB, "qcow2")
    with pytest.MonkeyPatch.context() as patch:
        # The lab's autouse TCG switch is per test; this guest outlives one (KVM hangs here).
        patch.setenv("KVMGR_DOMAIN_TYPE", "qemu")
        domain = demo_domain(src, VM, str(demo_iso), disk_path=ref.path)
    assert domain.type == "qemu"
    src.virconn.defineXML(domain.to_xml())
    src.virconn.lookupByName(VM).create()
    with GuestShell.open(src, VM) as shell:
        shell.wait_ready()  # booted: its memory holds data to send, not only zero pages
    return VM


def _login(browser: Any, served: Served, user: str) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{served.url}/login")
    page.fill("#login-name", user)
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{served.url}/")
    return page


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)


def _where(lab_tls: list[Connection], name: str) -> list[str]:
    """The lab hosts (h1..) that have a domain ``name``."""
    found = []
    for index, conn in enumerate(lab_tls, start=1):
        try:
            conn.virconn.lookupByName(name)
        except libvirt.libvirtError:
            continue
        found.append(f"h{index}")
    return found


def _open_picker(page: Any) -> None:
    page.click("#migrate-open")
    # auto plus the four hosts, each with its preflight verdict
    expect(page.locator("#migrate-hosts tbody tr")).to_have_count(5, timeout=60_000)


def _watch_numbers(
    page: Any, until: str, shot: Path | None = None, timeout: float = 180
) -> list[dict[str, str]]:
    """The progress figures the page showed, read every 0.3 s until ``until`` matches (and a
    screenshot into ``shot`` once the memory copy shows figures)."""
    seen: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while not page.locator(until).count():
        assert time.monotonic() < deadline, "the task did not end in time"
        figures = page.evaluate(
            """() => Object.fromEntries(
                 ['disk', 'memory', 'remaining', 'rate', 'eta', 'passes', 'downtime-steps']
                 .map((k) => [k, document.getElementById('migrate-' + k).textContent]))"""
        )
        if figures not in seen:
            seen.append(figures)
        if shot is not None and " of " in figures["memory"]:
            page.screenshot(path=str(shot), full_page=True)
            shot = None
        time.sleep(0.3)
    return seen


def test_only_admins_get_the_migrate_action(browser: Any, web: Served, guest: str) -> None:
    page = _login(browser, web, "viewer")
    try:
        page.goto(f"{web.url}/vms/{guest}")
        expect(page.locator("h1")).to_contain_text(guest)
        assert page.locator("#migrate-card").count() == 0
        page.goto(f"{web.url}/hosts")
        expect(page.locator("#host-table tbody tr")).to_have_count(4)
        assert page.locator("#evacuate-card").count() == 0
        assert page.locator("#host-table button", has_text="evacuate").count() == 0
    finally:
        page.context.close()


def test_a_running_vm_migrated_from_its_page_arrives_with_progress_shown(
    browser: Any, web: Served, guest: str, lab_tls: list[Connection], tmp_path: Path
) -> None:
    page = _login(browser, web, "admin")
    try:
        page.goto(f"{web.url}/vms/{guest}")
        _open_picker(page)
        rows = page.locator("#migrate-hosts tbody tr")
        expect(page.locator("#migrate-mode")).to_contain_text("Mode: live")
        expect(rows.nth(0)).to_contain_text("picks h")  # auto, with placement's explanation
        expect(rows.nth(0)).to_contain_text("h3: skipped, in maintenance")
        host = page.locator  # one host's row: tr[data-host=NAME]
        expect(host("tr[data-host=h3]")).to_contain_text("refused: host h3 is in maintenance")
        expect(host("tr[data-host=h1]")).to_contain_text(f"VM {guest} is on host h1 already")
        expect(host("tr[data-host=h2]")).to_contain_text("ok: live")
        assert page.locator("tr[data-host=h3] input").is_disabled()
        _shot(page, tmp_path, "migrate-picker")

        page.check("tr[data-host=h2] input")
        page.fill("#migrate-downtime", "400")
        page.fill("#migrate-bandwidth", "10")  # MiB/s: a few seconds of memory copy to watch
        page.click("#migrate-start")
        expect(page.locator("#migrate-progress")).to_be_visible()
        page.locator("#migrate-stats[data-samples]").wait_for(timeout=60_000)
        ended = "#migrate-result[data-state]"
        seen = _watch_numbers(page, ended, tmp_path / "migrate-progress.png")
        expect(page.locator("#migrate-result")).to_contain_text("Moved live to h2")
        expect(page.locator("#vm-state")).to_have_text("moved to h2")
        _shot(page, tmp_path, "migrate-done")
        print("figures shown while it ran:", seen)
        # the memory copy was seen under way: some MiB sent of the total, at a rate
        moving = [s for s in seen if re.match(r"[1-9]\d* of \d+ MiB", s["memory"])]
        assert moving and any(s["rate"].endswith("MiB/s") for s in moving), seen
        assert all(s["downtime-steps"].startswith("400 ms") for s in seen if s["memory"] != NONE)
        assert page.locator("#migrate-result").get_attribute("data-state") == "done"
        assert _where(lab_tls, guest) == ["h2"]
        assert lab_tls[1].virconn.lookupByName(guest).isActive()
        assert f"{guest}.qcow2" not in _volumes(lab_tls[0])
    finally:
        page.context.close()


def test_cancel_of_a_slow_migration_leaves_the_vm_on_its_source(
    browser: Any, web: Served, guest: str, lab_tls: list[Connection], tmp_path: Path
) -> None:
    (source,) = _where(lab_tls, guest)  # h2 after the test above, h1 when run alone
    target = "h1" if source == "h2" else "h2"
    src, dst = lab_tls[int(source[1:]) - 1], lab_tls[int(target[1:]) - 1]
    page = _login(browser, web, "admin")
    try:
        page.goto(f"{web.url}/vms/{guest}?host={source}")
        _open_picker(page)
        page.check(f"tr[data-host={target}] input")
        page.fill("#migrate-bandwidth", "1")  # 1 MiB/s: caught running for certain
        page.click("#migrate-start")
        page.locator("#migrate-stats[data-samples]").wait_for(timeout=60_000)
        # the disk mirror has begun (at 1 MiB/s it lasts the whole test)
        expect(page.locator("#migrate-disk")).to_contain_text(" of 64 MiB", timeout=30_000)
        dom = src.virconn.lookupByName(guest)
        assert dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE  # the job is running now
        _shot(page, tmp_path, "migrate-slow")
        page.click("#migrate-cancel")
        page.locator("#migrate-result[data-state]").wait_for(timeout=120_000)
        _shot(page, tmp_path, "migrate-cancelled")
        assert page.locator("#migrate-result").get_attribute("data-state") == "cancelled"
        expect(page.locator("#migrate-result")).to_contain_text("aborted")
        assert dom.isPersistent()  # still on the source, running (libvirt resumes it)
        deadline = time.monotonic() + 30
        while dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            assert time.monotonic() < deadline, dom.state()
            time.sleep(0.2)
        expect(page.locator("#vm-state")).to_have_text("running")
        assert _where(lab_tls, guest) == [source]
        assert f"{guest}.qcow2" not in _volumes(dst)
    finally:
        page.context.close()


def test_evacuate_from_the_hosts_page_shows_the_plan_then_progress(
    browser: Any, web: Served, lab_tls: list[Connection], demo_iso: Path, tmp_path: Path
) -> None:
    """Host h4 with a running demo guest and two shut-off VMs: the plan lists all three, then
    they move two at a time (the running one live, its job's figures in its row while it
    moves, read from the evacuation task) and h4 ends empty and in maintenance."""
    h4 = lab_tls[3]
    names = [f"{PREFIX}-ev{i}" for i in range(2)]
    for name in names:
        path = storage.create_volume(h4, POOL, f"{name}.img", 4 * MIB, "raw").path
        h4.virconn.defineXML(_shut_off_domain(h4, name, [path], "default").to_xml())
    running = f"{PREFIX}-evlive"
    ref = storage.create_volume(h4, POOL, f"{running}.qcow2", 32 * MIB, "qcow2")
    domain = demo_domain(h4, running, str(demo_iso), disk_path=ref.path, memory=160 * MIB)
    h4.virconn.defineXML(domain.to_xml())
    h4.virconn.lookupByName(running).create()
    with GuestShell.open(h4, running) as shell:
        shell.wait_ready()  # booted: its memory holds data, seconds to copy, not a blink
    # An evacuation sets no bandwidth, so libvirt uses the VM's own migration speed: 8 MiB/s
    # makes the live move last several of the service's 2 s job reads (unlimited, it can end
    # between two of them on a quiet machine, and no figures reach its row).
    h4.virconn.lookupByName(running).migrateSetMaxSpeed(8, 0)
    page = _login(browser, web, "admin")
    try:
        page.goto(f"{web.url}/hosts")
        row = page.locator("#host-table tbody tr", has_text="h4")
        row.locator("button", has_text="evacuate").click()
        plan = page.locator("#evacuate-plan tbody tr")
        expect(plan).to_have_count(3, timeout=60_000)
        for name in names:
            expect(page.locator(f"#evacuate-plan tr[data-vm={name}]")).to_contain_text("planned")
            expect(page.locator(f"#evacuate-plan tr[data-vm={name}]")).to_contain_text("offline")
        live_row = page.locator(f"#evacuate-plan tr[data-vm={running}]")
        expect(live_row).to_contain_text("live")
        expect(page.locator("#evacuate-parallel")).to_have_value("2")
        _shot(page, tmp_path, "evacuate-plan")
        page.click("#evacuate-start")
        shown: list[str] = []
        deadline = time.monotonic() + 180
        while not page.locator("#evacuate-card[data-state]").count():
            assert time.monotonic() < deadline, "the evacuation did not end in time"
            text = live_row.locator("td").nth(5).inner_text()  # its progress cell
            if text and text not in shown:
                shown.append(text)
                if len(shown) == 1:
                    _shot(page, tmp_path, "evacuate-progress")
            time.sleep(0.3)
        _shot(page, tmp_path, "evacuate-done")
        print("the live move's row while it moved:", shown)
        # job-stats figures while it moved (the service reads them every 2 s: one sample at least)
        assert any(re.search(r"(disks|memory) \d+/\d+ MiB", text) for text in shown), shown
        assert page.locator("#evacuate-card").get_attribute("data-state") == "done"
        expect(page.locator("#evacuate-result")).to_contain_text("empty and in maintenance")
        for name in [*names, running]:
            expect(page.locator(f"#evacuate-plan tr[data-vm={name}]")).to_contain_text("moved")
        assert not h4.virconn.listAllDomains(0)
        expect(row).to_contain_text("end maintenance")  # the table was refreshed
        assert {host for name in names for host in _where(lab_tls, name)} <= {"h1", "h2"}
        (arrived,) = _where(lab_tls, running)
        assert lab_tls[int(arrived[1:]) - 1].virconn.lookupByName(running).isActive()
    finally:
        page.context.close()
