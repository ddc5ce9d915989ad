"""The create wizard in headless Chromium against the real daemon (issue 13 item 4):

* the Rocky-like installer ISO: the page shows the detected OS and its defaults and offers an
  unattended install; filled in and submitted, the task installs and the VM runs from its disk;
  the password is nowhere in the task or the page;
* the demo cloud image: "from cloud image" with a user, key and hostname; the VM boots and its
  seed was made and applied;
* the plain demo ISO (no install script): no unattended section, and the page says why;
* a Windows-like ISO: the section with a product key and a required user; the submitted body
  carries the password and the key, which the task keeps only as secrets its worker takes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest
from playwright.sync_api import expect

from kvmgr.connect import open_connection
from kvmgr.errors import NotFound
from kvmgr.images.test_media import build_cloud_image, build_installer_iso
from kvmgr.services.cloud_images import delete_image, import_image
from kvmgr.services.storage import find_volume_by_path
from kvmgr.xml.domain import Domain
from tests.e2e.conftest import PASSWORD, Served, screenshot
from tests.integration.conftest import DEMO_ISO_CACHE, purge_prefix
from tests.integration.guest import GuestShell
from tests.integration.test_windows_install import build_windows_iso

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PREFIX = "t-wiz-"
ROCKY_ISO = "t-wiz-rocky.iso"
DEMO_ISO = "t-wiz-demo.iso"
WIN_ISO = "t-wiz-win.iso"
PRODUCT_KEY = "VK7JG-NPHTM-C97JM-9MPGT-3V66T"  # Microsoft's published generic Windows 10 key
IMAGE = "t-wiz-cloud"
POOL = "t-wiz-pool"
POOL_PATH = "/var/lib/libvirt/images/t-wiz-pool"  # where QEMU may read it
SECRET = "wizard-secret-93"  # the guest passwords typed in the page
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl t@kvmgr"


def _api(served: Served) -> httpx.Client:
    return httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {served.admin_token}"}, timeout=60
    )


def _wait_task(api: httpx.Client, task: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while task["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.3)
        task = api.get(f"/api/v1/tasks/{task['id']}").json()
    return task


def _cleanup(served: Served) -> None:
    with _api(served) as api:
        for row in api.get("/api/v1/vms").json():
            if row["name"].startswith(PREFIX):
                api.delete(f"/api/v1/vms/{row['name']}", params={"force": "true"})
        for iso in (ROCKY_ISO, DEMO_ISO, WIN_ISO):
            api.delete(f"/api/v1/isos/{iso}")
        api.delete(f"/api/v1/pools/{POOL}", params={"force": "true"})
    with open_connection() as conn:  # whatever the API could not remove; the image goes last
        purge_prefix(conn, PREFIX)
        with contextlib.suppress(NotFound):
            delete_image(conn, IMAGE)
        purge_prefix(conn, PREFIX)


@pytest.fixture(scope="module")
def media(served: Served, demo_iso: Path) -> Iterator[None]:
    """The three sources imported: two ISOs through the API, the image as ``kvmgr image
    import`` does (the API does not import images: that reads a host file)."""
    cache = DEMO_ISO_CACHE.parent
    rocky = build_installer_iso(cache / "rocky-demo.iso")
    cloud = build_cloud_image(cache / "cloud-demo.qcow2")
    windows = build_windows_iso(cache / "windows-like.iso")
    _cleanup(served)
    try:
        with _api(served) as api:
            for path, name in ((rocky, ROCKY_ISO), (demo_iso, DEMO_ISO), (windows, WIN_ISO)):
                task = api.post("/api/v1/isos", json={"path": str(path), "name": name}).json()
                assert _wait_task(api, task)["state"] == "done", task
            made = api.post("/api/v1/pools", json={"name": POOL, "path": POOL_PATH})
            assert made.status_code in (200, 201, 202), made.text
        with open_connection() as conn:
            import_image(conn, str(cloud), os_id="linux2022", name=IMAGE)
        yield
    finally:
        _cleanup(served)


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.on("console", lambda message: print("browser:", message.type, message.text))
    page.goto(f"{served.url}/login")
    page.fill("#login-name", "admin")
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{served.url}/")
    try:
        yield page
    finally:
        context.close()


def _open_wizard(page: Any, served: Served, option: str, select: str = "#iso") -> None:
    page.goto(f"{served.url}/vms/new")
    page.wait_for_selector(f"{select} option[value='{option}']", state="attached")
    page.select_option(select, option)


def _submit(page: Any, served: Served, name: str, timeout_ms: int) -> str:
    """Submit the form; the task id (from the POST's answer) once the VM page is shown."""
    with page.expect_response(
        lambda r: r.url.endswith("/api/v1/vms") and r.request.method == "POST"
    ) as posted:
        page.click("#create-submit")
    assert posted.value.status == 202, posted.value.text()
    task_id = str(posted.value.json()["id"])
    try:
        page.wait_for_url(f"{served.url}/vms/{name}", timeout=timeout_ms)
    except Exception:
        screenshot(page, f"wizard-failure-{name}")
        raise AssertionError(
            f"{page.inner_text('#create-message')!r} / {page.inner_text('#flash')!r}"
        ) from None
    return task_id


def _domain(name: str) -> tuple[bool, Domain]:
    with open_connection() as conn:
        dom = conn.virconn.lookupByName(name)
        return bool(dom.isActive()), Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def test_unattended_install_from_the_wizard(page: Any, served: Served, media: None) -> None:
    name = f"{PREFIX}rocky"
    with _api(served) as api:
        iso = next(i for i in api.get("/api/v1/isos").json() if i["name"] == ROCKY_ISO)
    assert iso["os_id"] == "rocky9" and iso["install_script"] == "kickstart"
    _open_wizard(page, served, ROCKY_ISO)
    note = page.inner_text("#iso-os")
    assert f"Detected: {iso['os_name']} (rocky9)" in note and "Recommended:" in note
    recommended = iso["recommended"]
    assert page.input_value("#vm-memory") == f"{round(recommended['memory'] / 1048576)}M"
    assert page.input_value("#vm-vcpus") == str(recommended["vcpus"])
    expect(page.locator("#unattended-set")).to_be_visible()
    assert page.inner_text("#unattended-kind") == "kickstart"
    expect(page.locator("#unattended-none")).to_be_hidden()
    expect(page.locator("#cloud-set")).to_be_hidden()

    page.uncheck("#unattended")
    page.fill("#u-user", "alice")
    assert page.is_checked("#unattended")  # typing in the section ticks it
    page.fill("#u-password", SECRET)
    page.fill("#u-root-password", SECRET)
    page.fill("#u-ssh-key", KEY)
    page.fill("#vm-name", name)
    page.fill("#vm-memory", "384M")  # the stand-in installer's needs, not Rocky's
    page.fill("#vm-vcpus", "1")
    page.fill("#vm-disk", "1G")
    page.select_option("#vm-pool", POOL)
    page.select_option("#vm-network", "none")
    screenshot(page, "wizard-unattended-form")
    task_id = _submit(page, served, name, timeout_ms=300_000)

    expect(page.locator("#vm-state")).to_have_text("running", timeout=30_000)
    screenshot(page, "wizard-unattended-vm")
    assert SECRET not in page.content() and SECRET not in page.inner_text("body")
    # the page lists its one disk and no installer media
    devices = page.locator("#vm-disks").locator("tbody tr td:nth-child(2)").all_inner_texts()
    assert devices == ["disk"], devices
    assert f"{POOL_PATH}/{name}.qcow2" in page.inner_text("#vm-disks")  # the pool picked
    with _api(served) as api:
        task = api.get(f"/api/v1/tasks/{task_id}")
        assert task.json()["state"] == "done", task.text
        assert task.json()["result"]["os_id"] == "rocky9", task.text
        for text in (task.text, api.get("/api/v1/tasks").text, api.get(f"/api/v1/vms/{name}").text):
            assert SECRET not in text
    running, domain = _domain(name)
    assert running and domain.os.kernel is None and domain.os.cmdline is None
    assert domain.current_memory_bytes == 384 << 20  # what the form asked for
    assert [d.device for d in domain.devices.disks] == ["disk"]


def test_cloud_image_from_the_wizard(page: Any, served: Served, media: None) -> None:
    name = f"{PREFIX}cloudvm"
    _open_wizard(page, served, IMAGE, select="#image")
    expect(page.locator("#cloud-set")).to_be_visible()
    expect(page.locator("#unattended-set")).to_be_hidden()
    assert page.input_value("#iso") == ""
    assert "Cloud image: linux2022" in page.inner_text("#iso-os")
    page.fill("#c-user", "alice")
    page.fill("#c-ssh-key", KEY)
    page.fill("#c-hostname", "wizard-host")
    page.fill("#vm-name", name)
    page.fill("#vm-memory", "256M")
    page.fill("#vm-vcpus", "1")
    page.fill("#vm-disk", "1G")
    page.select_option("#vm-network", "default")  # (the guest's ready check wants a lease)
    screenshot(page, "wizard-cloud-form")
    task_id = _submit(page, served, name, timeout_ms=120_000)

    expect(page.locator("#vm-state")).to_have_text("running", timeout=30_000)
    devices = page.locator("#vm-disks").locator("tbody tr td:nth-child(2)").all_inner_texts()
    assert sorted(devices) == ["cdrom", "disk"], devices  # the overlay and the seed
    screenshot(page, "wizard-cloud-vm")
    with _api(served) as api:
        task = api.get(f"/api/v1/tasks/{task_id}").json()
        assert api.get(f"/api/v1/vms/{name}").json()["state"] == "running"
    result = task["result"]
    assert result["image"] == IMAGE, json.dumps(task)
    with open_connection() as conn:
        assert find_volume_by_path(conn, result["seed_volume"]) is not None
        assert find_volume_by_path(conn, result["volumes"][0]).info()[1] == 1 << 30
        with GuestShell.open(conn, name) as shell:  # the seed was applied, not only attached
            shell.wait_ready()
            assert shell.run("hostname").strip() == "wizard-host"
            assert shell.run("cat /home/alice/.ssh/authorized_keys").strip() == KEY


def test_an_iso_without_a_script_offers_no_unattended_install(
    page: Any, served: Served, media: None
) -> None:
    _open_wizard(page, served, DEMO_ISO)
    assert "Detected:" in page.inner_text("#iso-os")
    expect(page.locator("#unattended-set")).to_be_hidden()
    expect(page.locator("#unattended-none")).to_be_visible()
    assert "No unattended install" in page.inner_text("#unattended-none")
    screenshot(page, "wizard-no-script")
    # picking the installer ISO instead offers it again, and the note goes
    page.select_option("#iso", ROCKY_ISO)
    expect(page.locator("#unattended-set")).to_be_visible()
    expect(page.locator("#unattended-none")).to_be_hidden()


def test_a_windows_iso_offers_a_product_key_and_sends_it(
    page: Any, served: Served, media: None
) -> None:
    from kvmgr.control import task_secrets

    name = f"{PREFIX}win"
    with _api(served) as api:
        iso = next(i for i in api.get("/api/v1/isos").json() if i["name"] == WIN_ISO)
    assert iso["os_id"] == "win10" and iso["install_script"] == "autounattend"
    _open_wizard(page, served, WIN_ISO)
    expect(page.locator("#unattended-set")).to_be_visible()
    assert page.inner_text("#unattended-kind") == "autounattend"
    expect(page.locator("#u-product-key-row")).to_be_visible()
    expect(page.locator("#u-windows-note")).to_be_visible()
    expect(page.locator("#u-user-required")).to_be_visible()
    expect(page.locator("#u-ssh-key-row")).to_be_hidden()  # Windows Setup has no place for it
    assert page.inner_text("#u-root-label") == "Administrator password"
    page.fill("#u-password", SECRET)
    page.fill("#u-product-key", PRODUCT_KEY)
    assert page.is_checked("#unattended")
    page.fill("#vm-name", name)
    page.fill("#vm-memory", "512M")
    page.fill("#vm-vcpus", "1")
    page.fill("#vm-disk", "1G")
    page.select_option("#vm-network", "none")
    page.click("#create-submit")  # no user: the page says so and posts nothing
    expect(page.locator("#flash")).to_contain_text("needs a user")
    page.fill("#u-user", "alice")
    screenshot(page, "wizard-windows-form")
    with page.expect_request(
        lambda r: r.url.endswith("/api/v1/vms") and r.method == "POST"
    ) as request:
        page.click("#create-submit")
    sent = request.value.post_data_json["unattended"]
    assert (sent["user"], sent["password"], sent["product_key"]) == ("alice", SECRET, PRODUCT_KEY)
    assert sent["ssh_keys"] == []
    with _api(served) as api:
        tasks = [t for t in api.get("/api/v1/tasks").json() if t["target"] == name]
        assert len(tasks) == 1, tasks
        task = tasks[0]
        deadline = time.monotonic() + 120
        while "Setup is running" not in task["message"]:  # the stand-in ISO boots nothing
            assert task["state"] in ("queued", "running") and time.monotonic() < deadline, task
            time.sleep(0.3)
            task = api.get(f"/api/v1/tasks/{task['id']}").json()
        assert task_secrets.names(served.app.state.ctx.store, task["id"]) == []  # taken
        with open_connection() as conn:
            conn.virconn.lookupByName(name).destroy()  # Setup's closing power-off
        task = _wait_task(api, task)
        assert task["state"] == "done", task["error"]
        for text in (
            json.dumps(task),
            api.get("/api/v1/tasks").text,
            api.get("/api/v1/audit").text,
        ):
            assert SECRET not in text and PRODUCT_KEY not in text
    page.wait_for_url(f"{served.url}/vms/{name}", timeout=30_000)
    assert SECRET not in page.content() and PRODUCT_KEY not in page.content()
