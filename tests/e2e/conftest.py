"""End-to-end fixtures: kvmgr serve on a loopback port against qemu:///system, and Debian's
headless Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from kvmgr.api.app import create_app
from kvmgr.api.settings import Settings
from kvmgr.store import users
from kvmgr.store.models import Role
from tests.integration.conftest import demo_iso  # noqa: F401 - the shared demo ISO fixture

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).parent / "screenshots"
PASSWORD = "e2e-password-1"


@dataclass
class Served:
    url: str
    admin_token: str
    app: Any = None  # the FastAPI app, for state no route sets (a backup repository)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("e2e"))


def serve(state_dir: Path, **overrides: Any) -> Iterator[Served]:
    """``kvmgr serve`` in a thread (a module's own ``served`` fixture may change settings)."""
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "uri": os.environ.get("KVMGR_URI", "qemu:///system"),
        "secret_key": "e" * 40,
        "console_token_seconds": 30,
        **overrides,
    }
    app = create_app(Settings(**values))
    with app.state.ctx.store.session() as session:
        users.create_user(session, "admin", PASSWORD, Role.admin)
        users.create_user(session, "viewer", PASSWORD, Role.viewer)
        token = users.create_token(session, "admin", "e2e")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert time.monotonic() < deadline, "kvmgr serve did not start"
            time.sleep(0.05)
        yield Served(f"http://127.0.0.1:{port}", token, app)
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed: run scripts/install-test-deps.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def screenshot(page: Any, name: str) -> None:
    """A full-page screenshot that leaves the page scrolled where it was.

    For a page taller than the window Chromium moves the scroll position during the capture and
    puts it back only a moment after the call returns (the VM page: 1196 -> 1238 px, back 0.2-1 s
    later).  An action in between is aimed where its element is then and lands beside it once the
    page moves back: the console's "take over" right after the console-busy screenshot hit its
    section 42 px above, so the takeover never happened (4 of 4 runs; 0 of 4 without the
    screenshot).  Scrolling back at once makes Chromium's late restore move nothing.
    """
    SCREENSHOTS.mkdir(exist_ok=True)
    where = page.evaluate("[window.scrollX, window.scrollY]")
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    page.evaluate("([x, y]) => window.scrollTo(x, y)", where)
