"""A host's lifecycle events reach the API's event stream, and come back by themselves after
that host's ``libvirtd`` is restarted.

The host is a private libvirtd of a one-host lab (kvmgr.host.lab: its own namespaces, socket
and state), so restarting it disturbs nobody else's daemon.  The API server runs its worker,
whose host watcher owns the host's event lease; events travel through the events table to the
server's ``/api/v1/events``.  Guests are disk-less TCG domains that sit in the firmware: a
"started" event is all the test needs from them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest
import uvicorn

from kvmgr.api.app import create_app
from kvmgr.control.hosts import HostRegistry
from kvmgr.host import daemons
from kvmgr.host import lab as labs
from kvmgr.store import users
from kvmgr.store.models import Role
from tests.api.conftest import make_settings

pytestmark = pytest.mark.integration
PREFIX = "t-ev-"


def _domain(name: str) -> str:
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
        "<os><type arch='x86_64'>hvm</type></os><devices/>"
        "</domain>"
    )


@pytest.fixture(scope="module")
def lab_host() -> Iterator[tuple[labs.Lab, labs.LabHost]]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    built = labs.up(1, owner_pid=os.getpid())
    try:
        yield built, built.hosts[0]
    finally:
        labs.down(built.name)


@pytest.fixture(scope="module")
def server(
    lab_host: tuple[labs.Lab, labs.LabHost], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str, Any]]:
    """The API (with its worker and host watchers) managing the lab host; (URL, token, host,
    the app's context)."""
    _lab, host = lab_host
    settings = make_settings(
        tmp_path_factory.mktemp("events"), uri=host.local_uri, events=True, stats_interval=0
    )
    app = create_app(settings)
    store = app.state.ctx.store
    with store.session() as session:
        users.create_user(session, "t-ev-admin", "password-1234", Role.admin)
        token = users.create_token(session, "t-ev-admin", "tests")
    name = HostRegistry(store).ensure_uri(host.local_uri, name=host.name).name
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    served = uvicorn.Server(config)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not served.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", token, name, app.state.ctx
    finally:
        served.should_exit = True
        thread.join(20)


class Stream:
    """Reads ``/api/v1/events`` in a thread; keeps every event."""

    def __init__(self, url: str, token: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, token), daemon=True)
        self._thread.start()

    def _read(self, url: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.stream("GET", f"{url}/api/v1/events", headers=headers, timeout=None) as answer:
            for line in answer.iter_lines():
                if line.startswith(": subscribed"):
                    self.subscribed.set()
                if line.startswith("data: "):
                    self.events.append(json.loads(line[6:]))
                if self._stop.is_set():
                    return

    def wait(self, match: dict[str, Any], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if all(event.get(key) == value for key, value in match.items()):
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no event {match} within {timeout} s; got {self.events[-5:]}")

    def close(self) -> None:
        self._stop.set()


def _restart_libvirtd(lab: labs.Lab, host: labs.LabHost) -> None:
    pidfile = host.pidfiles["libvirtd"]
    pid = int(pidfile.read_text().split()[0])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while labs.process_alive(pid):
        assert time.monotonic() < deadline, "libvirtd did not stop"
        time.sleep(0.1)
    inside = labs.enter(lab, host)
    subprocess.run(
        [*inside, "libvirtd", "-d", "--listen", "-p", "/run/libvirt/libvirtd.pid"],
        check=True,
        timeout=30,
    )
    deadline = time.monotonic() + 30
    while not daemons.daemon_answers(host.local_uri):
        assert time.monotonic() < deadline, "libvirtd did not come back"
        time.sleep(0.2)


def _start(uri: str, name: str) -> None:
    conn = libvirt.open(uri)
    try:
        conn.defineXML(_domain(name)).create()
    finally:
        conn.close()


def _purge(uri: str) -> None:
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains():
            if dom.name().startswith(PREFIX):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
    finally:
        conn.close()


def test_events_come_back_after_a_libvirtd_restart(
    lab_host: tuple[labs.Lab, labs.LabHost], server: tuple[str, str, str, Any]
) -> None:
    lab, host = lab_host
    url, token, name, ctx = server
    deadline = time.monotonic() + 60
    while name not in ctx.worker.host_owners.watchers:
        assert time.monotonic() < deadline, "no watcher for the lab host"
        time.sleep(0.1)
    watcher = ctx.worker.host_owners.watchers[name]
    assert watcher.connected.wait(60), "the host's events were never subscribed"
    stream = Stream(url, token)
    try:
        assert stream.subscribed.wait(10)
        _start(host.local_uri, f"{PREFIX}before")
        before = stream.wait({"type": "vm", "name": f"{PREFIX}before", "event": "started"}, 30)
        assert before["host"] == name

        _restart_libvirtd(lab, host)
        # The watcher notices the dropped connection, reconnects and subscribes again by itself.
        stream.wait({"type": "host", "host": name, "event": "connected", "connections": 2}, 90)
        _start(host.local_uri, f"{PREFIX}after")
        after = stream.wait({"type": "vm", "name": f"{PREFIX}after", "event": "started"}, 30)
        assert after["host"] == name
    finally:
        stream.close()
        _purge(host.local_uri)


def test_the_lab_daemon_is_private(lab_host: tuple[labs.Lab, labs.LabHost]) -> None:
    _lab, host = lab_host
    assert Path(str(host.socket)).exists() and "socket=" in host.local_uri
