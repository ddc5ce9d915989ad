"""QA of the web UI in headless Chromium against qemu:///system: names kvmgr would refuse, given
to libvirt objects by hand, are shown as text on every page (never as markup), and the storage
page deletes a pool that still holds volumes through the type-the-name dialog."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import libvirt
import pytest
from lxml import etree
from playwright.sync_api import expect

from tests.e2e.conftest import PASSWORD, Served, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

#: Markup that would create an element with this id if a page put the name in as HTML.
VM = 't-qa2-"><img id=qa2vm src=x>?#'
NET = "t-qa2-<i id=qa2net>n&amp;"
POOL = "t-qa2-pool"
URI = "qemu:///system"


def _domain_xml(name: str) -> str:
    root = etree.Element("domain", type="qemu")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "memory", unit="MiB").text = "64"
    etree.SubElement(etree.SubElement(root, "os"), "type").text = "hvm"
    return etree.tostring(root, encoding="unicode")


def _network_xml(name: str) -> str:
    root = etree.Element("network")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "bridge", name="t-qa2-br0")
    etree.SubElement(root, "ip", address="10.236.1.1", netmask="255.255.255.0")
    return etree.tostring(root, encoding="unicode")


def _undefine(conn: libvirt.virConnect) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        conn.lookupByName(VM).undefine()
    with contextlib.suppress(libvirt.libvirtError):
        conn.networkLookupByName(NET).undefine()


@pytest.fixture(scope="module")
def hostile_objects() -> Iterator[None]:
    """A VM and a network defined by hand (never started) with names kvmgr refuses."""
    conn = libvirt.open(URI)
    try:
        _undefine(conn)
        conn.defineXML(_domain_xml(VM))
        conn.networkDefineXML(_network_xml(NET))
        yield
    finally:
        _undefine(conn)
        conn.close()


@pytest.fixture
def admin_page(browser: Any, served: Served) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{served.url}/login")
        page.fill("#login-name", "admin")
        page.fill("#login-password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_url(f"{served.url}/")
        yield page
    finally:
        context.close()


def test_hostile_names_are_text_on_every_page(
    admin_page: Any, served: Served, hostile_objects: None
) -> None:
    page = admin_page
    page.goto(f"{served.url}/")
    expect(page.get_by_text(VM, exact=True)).to_have_count(1)
    assert page.locator("#qa2vm").count() == 0
    page.get_by_text(VM, exact=True).click()  # the link carries the name encoded
    # A VM named by hand is managed like any other: its page opens and shows the name as text.
    expect(page.locator("h1")).to_contain_text(VM)
    assert page.locator("#qa2vm").count() == 0
    screenshot(page, "qa-hostile-vm")

    page.goto(f"{served.url}/networks")
    expect(page.get_by_text(NET, exact=True)).to_have_count(1)
    assert page.locator("#qa2net").count() == 0


def _api(served: Served) -> httpx.Client:
    return httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {served.admin_token}"}, timeout=60
    )


@pytest.fixture
def pool_with_volumes(served: Served, tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / POOL
    with _api(served) as api:
        api.delete(f"/api/v1/pools/{POOL}", params={"force": "true"})
        made = api.post("/api/v1/pools", json={"name": POOL, "path": str(directory)})
        assert made.status_code == 201, made.text
        for name in ("a.qcow2", "b.raw"):
            body = {"name": name, "size": "1M", "format": name.rsplit(".", 1)[1]}
            assert api.post(f"/api/v1/pools/{POOL}/volumes", json=body).status_code == 201
        try:
            yield directory
        finally:
            api.delete(f"/api/v1/pools/{POOL}", params={"force": "true"})


def test_storage_page_deletes_a_pool_with_its_volumes(
    admin_page: Any, served: Served, pool_with_volumes: Path
) -> None:
    page = admin_page
    page.goto(f"{served.url}/storage")
    row = page.locator("#pool-table tbody tr").filter(has=page.get_by_text(POOL, exact=True))
    expect(row).to_have_count(1)
    row.get_by_role("button", name="delete…", exact=True).click()  # refused: it holds volumes
    page.fill("#confirm-name", POOL)
    page.click("#confirm-ok")
    expect(page.locator("#pool-error")).to_contain_text("2 volume(s)")
    expect(row).to_have_count(1)

    row.get_by_role("button", name="delete with its volumes…").click()
    expect(page.locator("#confirm-question")).to_contain_text("its 2 volumes")
    expect(page.locator("#confirm-ok")).to_be_disabled()
    page.fill("#confirm-name", POOL)
    page.click("#confirm-ok")
    expect(row).to_have_count(0)
    assert not pool_with_volumes.exists()
    with _api(served) as api:
        assert api.get(f"/api/v1/pools/{POOL}").status_code == 404


@pytest.mark.parametrize("target", ["/\\127.0.0.2:9/", "/\t/127.0.0.2:9/", "//127.0.0.2:9/"])
def test_login_never_redirects_to_another_origin(browser: Any, served: Served, target: str) -> None:
    # Browsers read '/\host' (and '/<tab>/host') as '//host': the old prefix check let them out.
    # The foreign origin is a loopback address, and every request off the served origin is
    # aborted, so a failing run sends nothing anywhere.
    context = browser.new_context()
    left: list[str] = []

    def keep_home(route: Any) -> None:
        if route.request.url.startswith(served.url):
            route.continue_()
        else:
            left.append(route.request.url)
            route.abort()

    context.route("**/*", keep_home)
    page = context.new_page()
    try:
        page.goto(f"{served.url}/login?next={quote(target, safe='')}")
        page.fill("#login-name", "admin")
        page.fill("#login-password", PASSWORD)
        page.click("#login-submit")
        deadline = time.monotonic() + 15
        while not left and "/login" in page.url:  # until the page went somewhere
            assert time.monotonic() < deadline, "the login did not navigate"
            page.wait_for_timeout(50)
        assert left == []
        assert page.url.startswith(served.url + "/")
    finally:
        context.close()


def test_login_still_returns_to_the_page_asked_for(browser: Any, served: Served) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{served.url}/storage")  # not logged in: sent to the login page
        page.wait_for_url(f"{served.url}/login?next=/storage")
        page.fill("#login-name", "admin")
        page.fill("#login-password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_url(f"{served.url}/storage")
    finally:
        context.close()
