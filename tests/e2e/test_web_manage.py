"""The networks, storage, ISO library and users pages in headless Chromium against qemu:///system:
every form driven for real (an isolated network created, given a DHCP reservation and deleted; a
dir pool in a temporary directory with a volume created, resized and deleted; the demo ISO imported
with its task's progress shown and deleted), and a viewer who sees none of the controls."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest
from playwright.sync_api import expect

from kvmgr.connect import open_connection
from tests.e2e.conftest import PASSWORD, Served, screenshot
from tests.integration.conftest import remove_vm

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NET = "t-web-net"
SUBNET = "10.235.7.0/24"
POOL = "t-web-pool"
VOL = "t-web-vol.qcow2"
ISO = "t-web-demo.iso"
USER = "t-web-user"
VM = "t-web-vm"


def _api(served: Served) -> httpx.Client:
    return httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {served.admin_token}"}, timeout=60
    )


def _remove_leftovers(served: Served) -> None:
    """Whatever a failed run left: through the API first, then libvirt directly."""
    with _api(served) as api:
        api.delete(f"/api/v1/vms/{VM}", params={"force": "true"})
        api.delete(f"/api/v1/pools/{POOL}/volumes/{VOL}")
        api.delete(f"/api/v1/pools/{POOL}", params={"force": "true"})
        api.delete(f"/api/v1/networks/{NET}", params={"force": "true"})
        api.delete(f"/api/v1/isos/{ISO}")
        api.delete(f"/api/v1/users/{USER}")
    with open_connection() as conn:
        remove_vm(conn, VM)
        with contextlib.suppress(libvirt.libvirtError):
            net = conn.virconn.networkLookupByName(NET)
            if net.isActive():
                net.destroy()
            net.undefine()
        with contextlib.suppress(libvirt.libvirtError):
            pool = conn.virconn.storagePoolLookupByName(POOL)
            if pool.isActive():
                pool.destroy()
            pool.undefine()


@pytest.fixture(scope="module")
def clean(served: Served) -> Iterator[None]:
    _remove_leftovers(served)
    try:
        yield
    finally:
        _remove_leftovers(served)


@pytest.fixture
def admin_page(browser: Any, served: Served, clean: None) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("console", lambda message: print("browser:", message.type, message.text))
    try:
        _login(page, served, "admin")
        yield page
    finally:
        context.close()


def _login(page: Any, served: Served, name: str) -> None:
    page.goto(f"{served.url}/login")
    page.fill("#login-name", name)
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{served.url}/")


def _confirm_delete(page: Any, name: str) -> None:
    """The type-the-name dialog: Delete stays disabled until the name matches."""
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#confirm-ok")).to_be_disabled()
    page.fill("#confirm-name", name[:-1])
    expect(page.locator("#confirm-ok")).to_be_disabled()
    page.fill("#confirm-name", name)
    page.click("#confirm-ok")
    expect(dialog).to_be_hidden()


def _row(page: Any, table: str, name: str) -> Any:
    return page.locator(f"#{table} tbody tr").filter(has=page.get_by_text(name, exact=True))


def test_networks_page_creates_reserves_stops_and_deletes(admin_page: Any, served: Served) -> None:
    page = admin_page
    page.goto(f"{served.url}/networks")
    expect(page.locator("header nav a.current")).to_have_text("Networks")

    # An API refusal is shown next to the form, in words.
    page.fill("#net-name", NET)
    page.select_option("#net-mode", "isolated")
    page.fill("#net-subnet", "not-a-subnet")
    page.click("#net-create")
    expect(page.locator("#net-form-error")).to_contain_text("not-a-subnet")
    assert _row(page, "net-table", NET).count() == 0

    page.fill("#net-subnet", SUBNET)
    page.uncheck("#net-autostart")
    page.click("#net-create")
    row = _row(page, "net-table", NET)
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(1)).to_have_text("isolated")
    expect(row.locator("td").nth(2)).to_have_text(SUBNET)
    expect(row.locator("td").nth(5)).to_have_text("yes")
    expect(row.locator("td").nth(6)).to_have_text("no")

    row.get_by_role("button", name="enable autostart").click()
    expect(row.locator("td").nth(6)).to_have_text("yes")

    row.get_by_role("button", name=NET).click()
    expect(page.locator("#net-detail-name")).to_have_text(NET)
    page.fill("#res-ip", "10.235.7.50")
    page.fill("#res-mac", "52:54:00:aa:bb:cc")
    page.fill("#res-hostname", "t-web-host")
    page.click("#res-add")
    reservation = _row(page, "res-table", "10.235.7.50")
    expect(reservation).to_have_count(1)
    expect(reservation.locator("td").first).to_have_text("52:54:00:aa:bb:cc")
    page.fill("#res-ip", "192.0.2.1")  # outside the network: refused, said inline
    page.fill("#res-mac", "52:54:00:aa:bb:cd")
    page.click("#res-add")
    expect(page.locator("#res-error")).not_to_be_empty()
    expect(page.locator("#res-error")).to_be_visible()
    screenshot(page, "web-networks")
    reservation.get_by_role("button", name="remove", exact=True).click()
    expect(reservation).to_have_count(0)

    row.get_by_role("button", name="stop", exact=True).click()
    expect(row.locator("td").nth(5)).to_have_text("no")
    expect(page.locator("#lease-note")).to_contain_text("not running")
    row.get_by_role("button", name="start", exact=True).click()
    expect(row.locator("td").nth(5)).to_have_text("yes")

    row.get_by_role("button", name="delete…", exact=True).click()
    _confirm_delete(page, NET)
    expect(row).to_have_count(0)
    with open_connection() as conn:
        assert NET not in conn.virconn.listNetworks() + conn.virconn.listDefinedNetworks()


def _wait_task(api: httpx.Client, task: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while task["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.3)
        task = api.get(f"/api/v1/tasks/{task['id']}").json()
    return task


def _define_vm_on_pool(served: Served) -> str:
    """A VM (never started) with a disk kvmgr makes in the pool: the volume a VM uses."""
    with _api(served) as api:
        body = {
            "name": VM,
            "memory": "128M",
            "disks": [f"pool={POOL},size=16M"],
            "networks": ["none"],
            "graphics": "none",
            "start": False,
        }
        task = _wait_task(api, api.post("/api/v1/vms", json=body).json())
        assert task["state"] == "done", task
        disks = api.get(f"/api/v1/vms/{VM}").json()["disks"]
    return str(Path(disks[0]["source"]).name)


def test_storage_page_pool_and_volumes(admin_page: Any, served: Served, tmp_path: Path) -> None:
    page = admin_page
    directory = tmp_path / "t-web-pool"
    page.goto(f"{served.url}/storage")
    expect(page.locator("header nav a.current")).to_have_text("Storage")

    page.fill("#pool-name", POOL)
    page.fill("#pool-path", "relative/dir")  # refused by the API, said next to the form
    page.click("#pool-create")
    expect(page.locator("#pool-form-error")).to_be_visible()
    expect(page.locator("#pool-form-error")).not_to_be_empty()
    page.fill("#pool-path", str(directory))
    page.click("#pool-create")
    pool_row = _row(page, "pool-table", POOL)
    expect(pool_row).to_have_count(1)
    expect(pool_row.locator("td").nth(3)).to_have_text("yes")
    expect(page.locator("#vol-pool")).to_have_text(POOL)

    page.fill("#vol-name", VOL)
    page.fill("#vol-size", "64M")
    page.select_option("#vol-format", "qcow2")
    page.click("#vol-create")
    vol_row = _row(page, "vol-table", VOL)
    expect(vol_row.locator("td").nth(2)).to_have_text("64 MiB")
    vol_row.locator("input.vol-new-size").fill("96M")
    vol_row.get_by_role("button", name="resize", exact=True).click()
    expect(vol_row.locator("td").nth(2)).to_have_text("96 MiB")
    vol_row.locator("input.vol-new-size").fill("32M")  # shrinking is refused: said in words
    vol_row.get_by_role("button", name="resize", exact=True).click()
    expect(page.locator("#vol-error")).to_contain_text("shrink")
    expect(vol_row.locator("td").nth(2)).to_have_text("96 MiB")

    vm_disk = _define_vm_on_pool(served)
    pool_row.get_by_role("button", name="refresh", exact=True).click()
    used_row = _row(page, "vol-table", vm_disk)
    expect(used_row.locator("td").nth(4)).to_have_text(f"VM {VM}")
    expect(used_row.get_by_role("button", name="delete…")).to_be_disabled()
    expect(used_row.locator(".reason")).to_have_text(f"in use by VM {VM}")
    screenshot(page, "web-storage")
    pool_row.get_by_role("button", name="delete…").click()  # refused: a VM uses a volume
    _confirm_delete(page, POOL)
    expect(page.locator("#pool-error")).to_contain_text(VM)
    with _api(served) as api:
        assert api.delete(f"/api/v1/vms/{VM}", params={"force": "true"}).status_code == 200

    pool_row.get_by_role("button", name="refresh", exact=True).click()
    expect(used_row).to_have_count(0)
    vol_row.get_by_role("button", name="delete…").click()
    _confirm_delete(page, VOL)
    expect(vol_row).to_have_count(0)
    pool_row.get_by_role("button", name="delete…").click()
    _confirm_delete(page, POOL)
    expect(pool_row).to_have_count(0)
    expect(page.locator("#vol-detail")).to_be_hidden()
    assert not directory.exists()


def test_iso_library_imports_refuses_in_use_and_deletes(
    admin_page: Any, served: Served, demo_iso: Path
) -> None:
    page = admin_page
    page.goto(f"{served.url}/isos")
    expect(page.locator("header nav a.current")).to_have_text("ISO library")

    page.fill("#iso-path", "/nonexistent/t-web.iso")
    page.click("#iso-import")
    expect(page.locator("#iso-form-error")).to_contain_text("/nonexistent/t-web.iso")

    page.fill("#iso-path", str(demo_iso))
    page.fill("#iso-name", ISO)
    page.click("#iso-import")
    expect(page.locator("#iso-task")).to_be_visible()
    expect(page.locator("#iso-message")).to_contain_text(f"imported {ISO}", timeout=120_000)
    expect(page.locator("#iso-progress")).to_have_attribute("value", "100")
    row = _row(page, "iso-table", ISO)
    expect(row).to_have_count(1)
    os_cell = row.locator("td").nth(1).inner_text()
    with _api(served) as api:
        listed = {iso["name"]: iso for iso in api.get("/api/v1/isos").json()}
        assert listed[ISO]["os_name"] in os_cell
        # A VM (never started) that has the ISO in its CD drive: the ISO is in use.
        body = {"name": VM, "iso": ISO, "memory": "128M", "disks": [], "networks": ["none"]}
        body |= {"graphics": "none", "start": False}
        assert _wait_task(api, api.post("/api/v1/vms", json=body).json())["state"] == "done"
    screenshot(page, "web-isos")

    row.get_by_role("button", name="delete…").click()
    _confirm_delete(page, ISO)
    expect(page.locator("#iso-error")).to_contain_text(VM)
    expect(row).to_have_count(1)
    with _api(served) as api:
        assert api.delete(f"/api/v1/vms/{VM}", params={"force": "true"}).status_code == 200
    row.get_by_role("button", name="delete…").click()
    _confirm_delete(page, ISO)
    expect(row).to_have_count(0)
    expect(page.locator("#iso-error")).to_be_hidden()


def test_users_page_creates_changes_role_deletes_and_audit_says_utc(
    admin_page: Any, served: Served
) -> None:
    page = admin_page
    page.goto(f"{served.url}/users")
    expect(page.locator("header nav a.current")).to_have_text("Users")
    page.fill("#user-name", USER)
    page.fill("#user-password", "short")
    page.click("#user-create")
    expect(page.locator("#user-form-error")).to_be_visible()
    expect(page.locator("#user-form-error")).not_to_be_empty()
    page.fill("#user-password", "t-web-password-1")
    page.select_option("#user-role", "viewer")
    page.click("#user-create")
    row = _row(page, "user-table", USER)
    expect(row.locator("select.user-role")).to_have_value("viewer")
    expect(row.locator("td").nth(3)).to_contain_text("UTC")
    row.locator("select.user-role").select_option("operator")
    with _api(served) as api:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            roles = {u["name"]: u["role"] for u in api.get("/api/v1/users").json()}
            if roles.get(USER) == "operator":
                break
            time.sleep(0.2)
        assert roles.get(USER) == "operator"
    # A group set and cleared from the page (issue 11 hole 2: groups could not be cleared).
    for wanted in ("t-web-team", None):
        row.locator("input.user-group").fill(wanted or "")
        row.locator("input.user-group").press("Tab")  # "change" fires when the field is left
        with _api(served) as api:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                groups = {u["name"]: u["group"] for u in api.get("/api/v1/users").json()}
                if groups.get(USER) == wanted:
                    break
                time.sleep(0.2)
            assert groups.get(USER) == wanted
    me = page.locator("#user-table tbody tr:has(td:first-child:text-is('admin'))")
    expect(me.locator("select.user-role")).to_be_disabled()
    screenshot(page, "web-users")
    row.get_by_role("button", name="delete…").click()
    _confirm_delete(page, USER)
    expect(row).to_have_count(0)

    page.goto(f"{served.url}/audit")
    expect(page.locator("header nav a.current")).to_have_text("Audit log")
    first = page.locator("#audit-table tbody tr").first.locator("td").first
    expect(first).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    expect(page.locator("#audit-table")).to_contain_text("user.delete")
    screenshot(page, "web-audit")


def test_viewer_sees_no_controls_and_the_api_refuses(
    browser: Any, served: Served, clean: None
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        _login(page, served, "viewer")
        forms = {
            "networks": "#net-form",
            "storage": "#pool-form",
            "isos": "#iso-form",
        }
        for path, form in forms.items():
            page.goto(f"{served.url}/{path}")
            expect(
                page.locator(f"#{path}-table, #net-table, #pool-table, #iso-table").first
            ).to_be_visible()
            expect(page.locator("tbody td").first).not_to_have_text("")
            assert page.locator(form).count() == 0
            assert page.locator("tbody button:not(.link-dark), .row-actions").count() == 0
            assert page.locator("nav a.current").inner_text() in {
                "Networks",
                "Storage",
                "ISO library",
            }
        page.goto(f"{served.url}/networks")
        page.locator("#net-table button.link-dark", has_text="default").click()
        expect(page.locator("#net-detail-name")).to_have_text("default")
        assert page.locator("#res-form").count() == 0
        screenshot(page, "web-viewer-networks")
        assert page.locator("nav a[href='/users']").count() == 0
        csrf = page.get_attribute("meta[name='csrf-token']", "content") or ""
        refused = page.request.post(
            f"{served.url}/api/v1/networks",
            headers={"X-CSRF-Token": csrf},
            data={"name": NET, "mode": "isolated", "subnet": SUBNET},
        )
        assert refused.status == 403
        refused = page.request.delete(
            f"{served.url}/api/v1/isos/{ISO}", headers={"X-CSRF-Token": csrf}
        )
        assert refused.status == 403
        assert page.goto(f"{served.url}/users").status == 403
    finally:
        context.close()
