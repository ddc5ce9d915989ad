"""kvmgr.services.readiness on the test driver: what a wait reports, and what a timeout says.

The signals themselves (marker, guest agent, SSH banner through the daemon's namespace) are
tested on the real daemon in tests/integration/test_readiness.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import InvalidInput, InvalidState
from kvmgr.services import addresses, readiness, vms
from kvmgr.services.create import DiskRequest, NicRequest, VMSpec, create_vm
from kvmgr.services.readiness import NotReady, Readiness
from kvmgr.units import GIB, MIB


@pytest.fixture
def conn() -> Iterator[Connection]:
    connection = open_connection("test:///default")
    yield connection
    for name in ("t-ready-a", "t-ready-b"):
        if vms.exists(connection, name):
            vms.delete(connection, name, force=True)
    connection.close()


def _spec(name: str, **overrides: object) -> VMSpec:
    spec = VMSpec(name, memory=256 * MIB, vcpus=1, disks=[DiskRequest(size=GIB)],
                  nics=[NicRequest()])  # fmt: skip
    for key, value in overrides.items():
        setattr(spec, key, value)
    return spec


def test_what_was_seen_reads_as_one_line() -> None:
    banner = Readiness("ready", "ssh banner", "SSH-2.0-OpenSSH_9.2 at 192.168.122.5:22")
    assert str(banner) == "ready: ssh banner SSH-2.0-OpenSSH_9.2 at 192.168.122.5:22"
    assert str(Readiness("ip", "ip", "192.168.122.5 from lease")) == "ip 192.168.122.5 from lease"


def test_create_wait_ip_reports_the_address_and_its_source(conn: Connection) -> None:
    result = create_vm(conn, _spec("t-ready-a", wait="ip", wait_timeout=10))
    assert result.ip is not None
    assert result.ready == f"ip {result.ip} from lease"


def test_ready_timeout_names_every_signal_and_why_not(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_vm(conn, _spec("t-ready-b"))
    monkeypatch.setattr(addresses, "discover_ips", lambda *_args, **_kw: [])
    monkeypatch.setattr(readiness, "ROUND", 0.1)
    dom = vms.lookup(conn, "t-ready-b")
    with pytest.raises(NotReady) as err:
        readiness.wait_for(conn, dom, "ready", 0.5, no_console="the VM has no serial console")
    message = err.value.message
    assert message.startswith("was not ready within 0.5 s; seen: nothing; not seen: ")
    assert "console marker (the VM has no serial console)" in message
    assert "guest agent (the test driver has no guest agent)" in message
    assert "ssh banner (the test driver's guests have no network)" in message
    assert "ip (no lease, agent or ARP entry" in message
    assert err.value.hint and "kvmgr vm console t-ready-b" in err.value.hint
    assert vms.state(conn, "t-ready-b") == "running"  # a wait never touches the VM


def test_ip_timeout_after_start_keeps_the_vm(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_vm(conn, _spec("t-ready-b", start=False))
    monkeypatch.setattr(addresses, "discover_ips", lambda *_args, **_kw: [])
    with pytest.raises(NotReady, match="was started and is kept running, but got no IP"):
        readiness.start_vm(conn, "t-ready-b", "ip", 0.5)
    assert vms.state(conn, "t-ready-b") == "running"


def test_a_vm_that_stops_ends_the_wait(conn: Connection) -> None:
    create_vm(conn, _spec("t-ready-b"))
    vms.force_off(conn, "t-ready-b")
    with pytest.raises(InvalidState, match="stopped before it was ready"):
        readiness.wait_for(conn, vms.lookup(conn, "t-ready-b"), "ip", 5)


@pytest.mark.parametrize(
    ("wait", "timeout", "match"), [("soon", 5.0, "--wait 'soon'"), ("ip", 0.0, "--timeout 0")]
)
def test_bad_waits_are_refused_before_the_start(
    conn: Connection, wait: str, timeout: float, match: str
) -> None:
    create_vm(conn, _spec("t-ready-b", start=False))
    with pytest.raises(InvalidInput, match=match):
        readiness.start_vm(conn, "t-ready-b", wait, timeout)
    assert vms.state(conn, "t-ready-b") == "shut off"
