"""Every mutating VM command takes the VM's lease in the database: while another process holds
it, lifecycle, live changes, snapshots, clones and delete are refused naming who holds it, and
``vm info`` shows it; afterwards commands run and leave no lease behind.  The CLI runs
in-process on libvirt's test driver (its running VM 'test'); the holder is a real process."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from kvmgr.api.settings import Settings
from kvmgr.cli.common import state
from kvmgr.cli.main import app
from kvmgr.connect import open_connection
from kvmgr.control.hosts import HostRegistry
from kvmgr.control.leases import Leases
from kvmgr.control.plane import vm_key
from kvmgr.store.db import Store

URI = "test:///default"
FORK = multiprocessing.get_context("fork")


@pytest.fixture(autouse=True)
def _fresh_cli_state() -> Iterator[None]:
    yield
    state.close()  # CliRunner bypasses run(): drop the cached connection and plane


def _key() -> str:
    """The lease key of VM 'test' on the host the CLI registers for the test driver's URI."""
    from kvmgr.control.hosts import HostRegistry

    store = Store(Settings().database_url)
    try:
        return vm_key(HostRegistry(store).ensure_uri(URI).name, _uuid()).key
    finally:
        store.dispose()


def _uuid() -> str:
    conn = open_connection(URI)
    try:
        return str(conn.virconn.lookupByName("test").UUIDString())
    finally:
        conn.close()


def _host() -> str:
    """The host name '-c test:///default' is registered under on first use (control.hosts)."""
    return HostRegistry(Store(Settings().database_url)).ensure_uri(URI).name


def _kvmgr(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--connect", URI, *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, " ".join(result.output.split())


def _hold(key: str, ready: object, release: object) -> None:
    store = Store(Settings().database_url)
    with Leases(store).hold(key, "snapshot create nightly", actor="cli:other"):
        ready.set()  # type: ignore[attr-defined]
        release.wait(60)  # type: ignore[attr-defined]


@pytest.fixture
def held() -> Iterator[str]:
    """VM 'test' leased by another process for the test's duration."""
    key = vm_key(_host(), _uuid()).key
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(key, ready, release))
    holder.start()
    assert ready.wait(30)
    yield key
    release.set()
    holder.join(30)


REFUSED = [
    ("vm", "start", "test"),
    ("vm", "pause", "test"),
    ("vm", "off", "test"),
    ("vm", "reboot", "test"),
    ("vm", "shutdown", "test", "--timeout", "1"),
    ("vm", "autostart", "test", "on"),
    ("vm", "set", "test", "--vcpus", "1"),
    ("vm", "disk", "add", "test", "--size", "1G"),
    ("vm", "nic", "remove", "test", "aa:bb:cc:dd:ee:ff"),
    ("vm", "clone", "test", "t-core-copy"),
    ("vm", "template", "test"),
    ("snap", "create", "test", "t-core-snap"),
    ("vm", "delete", "test", "--force"),
]


def test_mutating_commands_are_refused_while_another_process_holds_the_vm(held: str) -> None:
    for args in REFUSED:
        code, output = _kvmgr(*args)
        assert code == 1, (args, output)
        assert "VM test is busy: snapshot create nightly by cli:other since" in output, args
    code, output = _kvmgr("vm", "info", "test", "-o", "json")
    assert code == 0, output
    assert '"busy": "snapshot create nightly by cli:other since' in output
    code, output = _kvmgr("vm", "state", "test")  # reading needs no lease
    assert (code, output) == (0, "running")


def test_a_command_takes_the_lease_and_releases_it() -> None:
    code, output = _kvmgr("vm", "pause", "test")
    assert code == 0, output
    plane = state.plane()
    assert plane.busy(vm_key(_host(), _uuid())) is None
    # The lease of the pause is gone, so another process can take it at once.
    key = vm_key(_host(), _uuid()).key
    began = time.monotonic()
    with Leases(plane.store).hold(key, "probe", actor="cli:probe"):
        pass
    assert time.monotonic() - began < 2
    code, output = _kvmgr("vm", "info", "test", "-o", "json")
    assert '"busy": null' in output
    code, output = _kvmgr("vm", "resume", "test")  # test:///default is shared by the process
    assert code == 0, output
