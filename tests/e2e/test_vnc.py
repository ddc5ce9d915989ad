"""The graphical console end to end: a running VM with VNC on a unix socket, the VNC page in
headless Chromium, noVNC's RFB session established through kvmgr's websocket proxy; and the
websocket refusing a token bound to another VM, of another kind, or already used."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from kvmgr.connect import open_connection
from tests.e2e.conftest import PASSWORD, Served, screenshot
from tests.integration.conftest import remove_vm

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

VM = "t-api2-vnc"
OTHER = "t-api2-vnc-other"  # defined, never started: only a name a token can be bound to
TCP = "t-api2-vnc-tcp"  # as virt-install makes it: VNC on TCP with its own password
ISO = "t-api2-vnc-demo.iso"


def _api(served: Served) -> httpx.Client:
    return httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {served.admin_token}"}, timeout=60
    )


def _cleanup(served: Served) -> None:
    with _api(served) as api:
        for name in (VM, OTHER):
            api.delete(f"/api/v1/vms/{name}", params={"force": "true"})
        api.delete(f"/api/v1/isos/{ISO}")
    with open_connection() as conn:
        for name in (VM, OTHER, TCP):
            remove_vm(conn, name)


def _wait(api: httpx.Client, answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 202, answer.text
    task: dict[str, Any] = answer.json()
    for _ in range(600):
        if task["state"] not in ("queued", "running"):
            break
        time.sleep(0.1)
        task = api.get(f"/api/v1/tasks/{task['id']}").json()
    assert task["state"] == "done", task
    return task


@pytest.fixture(scope="module")
def vnc_vm(served: Served, demo_iso: Path) -> Iterator[str]:
    """A running 256 MiB VM with VNC (on a unix socket), no disk; plus a shut-off one."""
    _cleanup(served)
    try:
        with _api(served) as api:
            _wait(api, api.post("/api/v1/isos", json={"path": str(demo_iso), "name": ISO}))
            common = {"iso": ISO, "memory": "256M", "vcpus": 1, "disks": [], "networks": []}
            _wait(api, api.post("/api/v1/vms", json={"name": VM, "graphics": "vnc", **common}))
            body = {"name": OTHER, "graphics": "none", "start": False, **common}
            _wait(api, api.post("/api/v1/vms", json=body))
            graphics = api.get(f"/api/v1/vms/{VM}").json()["graphics"]
            assert [g["type"] for g in graphics] == ["vnc"] and graphics[0]["socket"], graphics
            assert graphics[0]["listen"] == "socket" and graphics[0]["password"] is False
        yield VM
    finally:
        _cleanup(served)


def _token(served: Served, vm: str, kind: str = "vnc") -> str:
    with _api(served) as api:
        answer = api.post(f"/api/v1/vms/{vm}/console-token", json={"kind": kind})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["token"])


def _ws_url(served: Served, vm: str, token: str) -> str:
    return f"{served.url.replace('http://', 'ws://')}/api/v1/vms/{vm}/vnc?token={token}"


def _refused(served: Served, vm: str, token: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(_ws_url(served, vm, token), open_timeout=10).close()
    assert refused.value.response.status_code == 403


def test_the_vnc_page_establishes_an_rfb_session(browser: Any, served: Served, vnc_vm: str) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("console", lambda message: print("browser:", message.type, message.text))
    try:
        page.goto(f"{served.url}/login")
        page.fill("#login-name", "admin")
        page.fill("#login-password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_url(f"{served.url}/")
        page.goto(f"{served.url}/vms/{vnc_vm}/vnc")
        # noVNC's "connect" event fires only after the RFB handshake and ServerInit.
        expect(page.locator("#vnc-status")).to_have_text("connected", timeout=30_000)
        canvas = page.locator("#vnc-screen canvas")
        expect(canvas).to_have_attribute("width", re.compile(r"^[1-9]\d*$"))
        expect(canvas).to_have_attribute("height", re.compile(r"^[1-9]\d*$"))
        box = canvas.bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0
        page.wait_for_timeout(1500)  # let the firmware's first frame arrive for the picture
        screenshot(page, "vm-vnc")

        # The dashboard's CPU column comes from the pushed bulk samples (two make a rate).
        page.goto(f"{served.url}/")
        row = page.locator(f"#vm-table tr:has(a[href^='/vms/{vnc_vm}?'])")
        # columns: host, name, state, vCPUs, CPU, ...
        expect(row.locator("td").nth(4)).to_have_text(re.compile(r"^\d+ %$"), timeout=15_000)
        expect(page.locator("#events-status")).to_have_text("events: live")
        screenshot(page, "dashboard-live-stats")

        page.goto(f"{served.url}/vms/{vnc_vm}")
        page.wait_for_selector("#vm")
        screenshot(page, "vm-page")
        for name in ("networks", "storage", "audit", "users", "tasks"):
            page.goto(f"{served.url}/{name}")
            page.wait_for_load_state("networkidle")
            screenshot(page, name)
    finally:
        context.close()
    with _api(served) as api:
        entries = api.get("/api/v1/audit", params={"target": vnc_vm}).json()
        assert ("console.vnc.open", "ok") in {(e["action"], e["result"]) for e in entries}


def test_the_proxy_speaks_rfb_once_per_token(served: Served, vnc_vm: str) -> None:
    token = _token(served, vnc_vm)
    with connect(_ws_url(served, vnc_vm, token), open_timeout=10) as socket:
        banner = socket.recv(timeout=10)
        assert isinstance(banner, bytes) and re.fullmatch(rb"RFB 003\.00[38]\n", banner)
    _refused(served, vnc_vm, token)  # used already


def test_tokens_are_bound_to_their_vm_and_kind(served: Served, vnc_vm: str) -> None:
    _refused(served, vnc_vm, _token(served, OTHER))  # issued for another VM
    _refused(served, vnc_vm, _token(served, vnc_vm, kind="serial"))  # for the serial console
    _refused(served, vnc_vm, "not-a-token")
    # A refusal uses the token up too: a guessed pairing cannot be retried.
    token = _token(served, vnc_vm)
    _refused(served, OTHER, token)
    _refused(served, vnc_vm, token)


def test_the_proxy_reaches_a_tcp_display(served: Served, demo_iso: Path, vnc_vm: str) -> None:
    """A VM made outside kvmgr with VNC on TCP and a password: the proxy reaches it through
    libvirt's descriptor (QEMU's password skipped, as for the VM's owner in virt-viewer), even
    though the port is in libvirtd's network namespace."""
    from kvmgr.xml.domain import Graphics, Video
    from tests.integration.guest import demo_domain

    with open_connection() as conn:
        spec = demo_domain(conn, TCP, str(demo_iso))
        graphics = Graphics()
        graphics.type, graphics.port, graphics.autoport = "vnc", -1, True
        graphics.listen, graphics.passwd = "127.0.0.1", "vm-Pass1"
        graphics.listen_type, graphics.listen_address = "address", "127.0.0.1"
        spec.devices.graphics.append(graphics)
        video = Video()
        video.model_type = "vga"
        spec.devices.videos.append(video)
        conn.virconn.defineXML(spec.to_xml()).create()
    try:
        with _api(served) as api:
            (shown,) = api.get(f"/api/v1/vms/{TCP}").json()["graphics"]
        assert shown["listen"] == "address" and shown["port"] >= 5900, shown
        assert shown["password"] is True and "vm-Pass1" not in str(shown)
        with connect(_ws_url(served, TCP, _token(served, TCP)), open_timeout=10) as socket:
            assert socket.recv(timeout=10) == b"RFB 003.008\n"
            socket.send(b"RFB 003.008\n")
            assert socket.recv(timeout=10) == bytes([1, 1])  # no authentication: skipped
            socket.send(b"\x01")
            assert socket.recv(timeout=10) == b"\0\0\0\0"
    finally:
        with open_connection() as conn:
            remove_vm(conn, TCP)
