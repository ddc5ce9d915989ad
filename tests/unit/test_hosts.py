"""The host registry on libvirt's test driver: several test:///file.xml hosts, a dead one, and one
that accepts TCP but never answers (the case a plain libvirt.open hangs on)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.driverfile import driver_xml, write_driver_file
from lxml import etree

from kvmgr.cli.main import take_host_option
from kvmgr.connect.bounded import TimedOut, call_bounded, fan_out
from kvmgr.control.hosts import (
    LOCAL,
    HostRegistry,
    check_host_uri,
    close_connections,
    derived_name,
    parse_labels,
)
from kvmgr.errors import AlreadyExists, InvalidInput, InvalidState, NotFound
from kvmgr.store import ownership
from kvmgr.store.db import Store

DATA = Path(__file__).parent.parent / "data" / "domains"
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'db' / 'kvmgr.db'}")
    yield store
    close_connections()
    store.dispose()


@pytest.fixture
def hosts(tmp_path: Path) -> list[str]:
    """Three test driver files of 5 VMs each (URIs)."""
    return [write_driver_file(tmp_path / f"h{i}.xml", 5) for i in range(3)]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung daemon or a black hole)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


# ------------------------------------------------------------------------------------ input
def test_labels_parse_and_refuse() -> None:
    assert parse_labels("rack=r1, zone=a,empty=") == {"rack": "r1", "zone": "a", "empty": ""}
    assert parse_labels("") == {}
    for bad in ("rack", "=x", "a b=c", "k=v w"):
        with pytest.raises(InvalidInput, match="KEY=VALUE"):
            parse_labels(bad)


def test_uri_rules() -> None:
    assert check_host_uri("qemu+ssh://root@10.0.0.5/system")
    assert check_host_uri("qemu+tls://node1.example/system")
    assert check_host_uri("qemu:///system")
    with pytest.raises(InvalidInput, match="neither encrypts") as err:
        check_host_uri("qemu+tcp://10.0.0.5/system")
    assert "--insecure-transport" in (err.value.hint or "")
    assert check_host_uri("qemu+tcp://10.0.0.5/system", insecure_transport=True)
    with pytest.raises(InvalidInput, match="certificate"):
        check_host_uri("qemu+tls://n1/system?no_verify=1")
    with pytest.raises(InvalidInput, match="not a libvirt URI") as err:
        check_host_uri("ssh://root@10.0.0.5")
    assert "qemu+ssh://root@10.0.0.5/system" in (err.value.hint or "")
    assert "--setup" in (err.value.hint or "")
    for bad in ("xen:///system", "qemu+ssh:///system", "qemu+ssh://h/", "http://x"):
        with pytest.raises(InvalidInput):
            check_host_uri(bad)


def test_derived_names() -> None:
    assert derived_name("qemu:///system", []) == LOCAL
    assert derived_name("qemu:///system", [LOCAL]) == "local-2"
    assert derived_name("qemu+ssh://root@node1.lab/system", []) == "node1.lab"
    assert derived_name("test:///tmp/x/h7.xml", ["test-h7"]) == "test-h7-2"


def test_host_option_anywhere() -> None:
    assert take_host_option(["vm", "list", "--host", "h1", "-o", "json"]) == (
        "h1",
        ["vm", "list", "-o", "json"],
    )
    assert take_host_option(["--host=h2", "net", "list"]) == ("h2", ["net", "list"])
    # after "--" it is an argument, not ours; without a value the parser reports it
    assert take_host_option(["vm", "x", "--", "--host", "h"]) == (
        None,
        ["vm", "x", "--", "--host", "h"],
    )
    assert take_host_option(["vm", "list", "--host"]) == (None, ["vm", "list", "--host"])


# ------------------------------------------------------------------------------------ registry
def test_add_list_set_remove(store: Store, hosts: list[str]) -> None:
    registry = HostRegistry(store)
    first = registry.add("h0", hosts[0], labels={"rack": "a"})
    assert first.host_uuid and first.last_seen is not None
    registry.add("h1", hosts[1])
    with pytest.raises(AlreadyExists, match="already registered"):
        registry.add("h0", hosts[2])
    with pytest.raises(AlreadyExists, match="as host 'h1'"):
        registry.add("other", hosts[1])
    # the same machine by another URI: caught by its identity, not its spelling
    twin = hosts[1].replace("/h1.xml", "/./h1.xml")
    with pytest.raises(AlreadyExists, match="same machine as host 'h1'"):
        registry.add("h1-again", twin)
    assert [h.name for h in registry.all()] == ["h0", "h1"]

    changed = registry.set("h1", labels={"zone": "b"}, maintenance=True, default=True)
    assert (changed.labels, changed.maintenance, changed.is_default) == ({"zone": "b"}, True, True)
    registry.set("h0", default=True)
    assert [h.name for h in registry.all() if h.is_default] == ["h0"]  # one default at a time

    rows = {row["name"]: row for row in registry.statuses(registry.all())}
    assert rows["h1"]["state"] == "maintenance" and rows["h0"]["state"] == "up"
    assert rows["h0"]["vms_defined"] == 5 and rows["h0"]["vms_running"] == 2
    assert rows["h0"]["domain_type"] == "test" and rows["h0"]["cpus"] > 0

    assert registry.remove("h1") == []
    with pytest.raises(NotFound, match="not registered") as err:
        registry.get("h1")
    assert "h0" in (err.value.hint or "")


def test_add_refuses_a_host_that_does_not_answer(store: Store) -> None:
    uri = f"qemu+tcp://127.0.0.1:{closed_port()}/system"
    with pytest.raises(InvalidInput):
        HostRegistry(store).add("dead", uri)  # tcp without --insecure-transport
    with pytest.raises(Exception, match="cannot connect"):
        HostRegistry(store).add("dead", uri, insecure_transport=True)
    assert HostRegistry(store).all() == []


def test_default_host_rules(
    store: Store, hosts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = HostRegistry(store)
    monkeypatch.setenv("KVMGR_URI", hosts[0])
    local = registry.default()  # nothing registered: the local daemon, on first use
    assert (local.name, local.uri, local.host_uuid) == (LOCAL, hosts[0], None)
    registry.statuses([local])  # the first answer tells which machine it is
    assert registry.get(LOCAL).host_uuid == f"test:{hosts[0].removeprefix('test://')}"
    registry.add("h1", hosts[1])
    assert registry.default().name == LOCAL  # local stays the default after remote ones join
    registry.remove(LOCAL)
    assert registry.default().name == "h1"  # the only host
    registry.add("h2", hosts[2])
    with pytest.raises(InvalidInput, match="none is the default"):
        registry.default()
    registry.set("h2", default=True)
    assert registry.default().name == "h2"
    # an unregistered -c URI: registered on first use under a derived name, then found by URI
    extra = hosts[0].replace("h0.xml", "h0x.xml")
    Path(extra.removeprefix("test://")).write_bytes(driver_xml(1))
    assert registry.ensure_uri(extra).name == "test-h0x"
    assert registry.ensure_uri(extra).name == "test-h0x"


def test_remove_refuses_while_kvmgr_vms_live_there(store: Store, tmp_path: Path) -> None:
    node = etree.fromstring(driver_xml(2))
    made = etree.parse(str(DATA / "kvmgr-made.xml")).getroot()
    made.set("type", "test")
    node.append(made)
    path = tmp_path / "made.xml"
    path.write_bytes(etree.tostring(node))
    registry = HostRegistry(store)
    registry.add("m", f"test://{path}")
    uuid = made.findtext("uuid")
    with store.session() as session:
        ownership.record(session, "vm", str(uuid), 1, None, host="m", label="web01")
        ownership.record(session, "vm", str(uuid), 1, None, host="elsewhere", label="web01")
    with pytest.raises(InvalidState, match="web01") as err:
        registry.remove("m")
    assert "--force" in (err.value.hint or "")
    assert registry.remove("m", force=True) == ["web01"]
    with store.session() as session:
        assert ownership.get(session, "vm", str(uuid), host="m") is None  # forgotten
        assert ownership.get(session, "vm", str(uuid), host="elsewhere") is not None
    assert registry.all() == []


def test_dead_and_hung_hosts_listed_as_down_within_the_bound(
    store: Store, hosts: list[str], silent_port: int
) -> None:
    bound = 1.5
    registry = HostRegistry(store, timeout=bound)
    for index, uri in enumerate(hosts):
        registry.add(f"h{index}", uri)
    refused = f"qemu+tcp://127.0.0.1:{closed_port()}/system"
    hung = f"qemu+tcp://127.0.0.1:{silent_port}/system"
    registry.add("refused", refused, insecure_transport=True, verify=False)
    registry.add("hung", hung, insecure_transport=True, verify=False)
    began = time.monotonic()
    rows = {row["name"]: row for row in registry.statuses(registry.all())}
    took = time.monotonic() - began
    assert [rows[f"h{i}"]["state"] for i in range(3)] == ["up", "up", "up"]
    assert rows["refused"]["state"] == "down" and "refused" in rows["refused"]["error"].lower()
    assert rows["hung"]["state"] == "down" and "no answer within 1.5 s" in rows["hung"]["error"]
    assert took < bound + 1.0, took
    assert rows["h0"]["seconds"] < bound
    # asking again while the hung open is still in flight waits for it: no second thread
    again = {row["name"]: row for row in registry.statuses(registry.all())}
    assert again["hung"]["state"] == "down"
    opening = [t for t in threading.enumerate() if t.name == f"open {hung}" and t.is_alive()]
    assert len(opening) == 1


# ------------------------------------------------------------------------------------ bounds
def test_fan_out_keeps_order_and_a_hung_item_delays_nobody() -> None:
    release = threading.Event()

    def work(item: int) -> int:
        if item == 0:
            release.wait(30)  # hung
        return item * 10

    began = time.monotonic()
    outcomes = fan_out([0, 1, 2, 3], work, 0.5, workers=1)  # one slot: the hung one gives it up
    assert time.monotonic() - began < 2.5
    assert [o.value for o in outcomes] == [None, 10, 20, 30]
    assert isinstance(outcomes[0].error, TimedOut)
    release.set()


def test_call_bounded_passes_errors_and_values() -> None:
    assert call_bounded(lambda: 7, 1.0, "x") == 7
    with pytest.raises(NotFound):
        call_bounded(lambda: (_ for _ in ()).throw(NotFound("gone")), 1.0, "x")
    with pytest.raises(TimedOut, match=r"no answer within 0\.2 s"):
        call_bounded(lambda: time.sleep(5), 0.2, "sleeping")


# ------------------------------------------------------------------------------------ CLI
def kvmgr(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KVMGR_URI", "KVMGR_DB_URL")}
    env.update({"KVMGR_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(SRC)})
    return subprocess.run(
        [sys.executable, "-m", "kvmgr.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_host_commands_and_host_option(tmp_path: Path, hosts: list[str]) -> None:
    assert kvmgr(tmp_path, "host", "add", "h0", hosts[0], "--labels", "rack=a").returncode == 0
    assert kvmgr(tmp_path, "host", "add", "h1", hosts[1]).returncode == 0
    refused = kvmgr(tmp_path, "host", "add", "t", "qemu+tcp://127.0.0.1:1/system")
    assert refused.returncode == 1 and "--insecure-transport" in refused.stderr
    listed = json.loads(kvmgr(tmp_path, "host", "list", "-o", "json").stdout)
    assert [(h["name"], h["state"], h["labels"]) for h in listed] == [
        ("h0", "up", {"rack": "a"}),
        ("h1", "up", {}),
    ]
    # two hosts, no default: a VM command asks which
    ambiguous = kvmgr(tmp_path, "vm", "list")
    assert ambiguous.returncode == 1 and "--host" in ambiguous.stderr
    # --host after the subcommand, and before it
    after = kvmgr(tmp_path, "vm", "list", "--host", "h1", "-o", "json")
    before = kvmgr(tmp_path, "--host", "h1", "vm", "list", "-o", "json")
    assert after.returncode == 0, after.stderr
    names = [vm["name"] for vm in json.loads(after.stdout)]
    assert names == [vm["name"] for vm in json.loads(before.stdout)]
    assert len(names) == 5
    missing = kvmgr(tmp_path, "vm", "list", "--host", "nope")
    assert missing.returncode == 1 and "not registered" in missing.stderr
    assert kvmgr(tmp_path, "host", "set", "h0", "--default", "--maintenance", "on").returncode == 0
    assert kvmgr(tmp_path, "vm", "list", "-o", "json").returncode == 0
    info = json.loads(kvmgr(tmp_path, "host", "info", "h0", "-o", "json").stdout)
    assert info["maintenance"] is True and info["default"] is True and info["uri"] == hosts[0]
    gone = kvmgr(tmp_path, "host", "remove", "h1", "-o", "json")
    assert json.loads(gone.stdout) == {"removed": "h1", "vms_forgotten": []}


def test_fleet_listing_names_hosts_and_shows_the_dead_one(
    store: Store, hosts: list[str], silent_port: int
) -> None:
    registry = HostRegistry(store, timeout=1.5)
    for index, uri in enumerate(hosts):
        registry.add(f"h{index}", uri)
    registry.add(
        "hung", f"qemu+tcp://127.0.0.1:{silent_port}/system", insecure_transport=True, verify=False
    )
    began = time.monotonic()
    rows, down = registry.fleet_vms()
    assert time.monotonic() - began < 2.5
    assert sorted({row["host"] for row in rows}) == ["h0", "h1", "h2"]
    assert len(rows) == 15 and all(row["name"].startswith("t-bench-") for row in rows)
    assert [(d["host"], "no answer within 1.5 s" in d["error"]) for d in down] == [("hung", True)]


def test_cli_vm_list_all_hosts(tmp_path: Path, hosts: list[str]) -> None:
    for index, uri in enumerate(hosts[:2]):
        assert kvmgr(tmp_path, "host", "add", f"h{index}", uri).returncode == 0
    dead = f"qemu+tcp://127.0.0.1:{closed_port()}/system"
    registry = HostRegistry(Store(f"sqlite:///{tmp_path / 'state' / 'db' / 'kvmgr.db'}"))
    registry.add("dead", dead, insecure_transport=True, verify=False)
    listed = kvmgr(tmp_path, "vm", "list", "--all-hosts", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted({row["host"] for row in rows if row.get("name")}) == ["h0", "h1"]
    assert [r["host"] for r in rows if r["state"] == "unreachable"] == ["dead"]
    table = kvmgr(tmp_path, "vm", "list", "--all-hosts")
    assert "HOST" in table.stdout and "unreachable" in table.stdout


def test_quick_lookup_agrees_with_the_registry(
    tmp_path: Path, hosts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's SQLAlchemy-free lookup (host_lookup) gives what the registry gives, or None."""
    from kvmgr.api.settings import Settings
    from kvmgr.control.host_lookup import database_url, quick_uri

    monkeypatch.delenv("KVMGR_DB_URL", raising=False)
    monkeypatch.setenv("KVMGR_STATE_DIR", str(tmp_path / "state"))
    assert database_url() == Settings().database_url
    monkeypatch.setenv("KVMGR_DB_URL", f"sqlite:///{tmp_path / 'other.db'}")
    assert database_url() == Settings().database_url
    monkeypatch.setenv("KVMGR_DB_URL", "postgresql+psycopg://kvmgr@db/kvmgr")
    assert database_url() == Settings().database_url
    assert quick_uri(None, "qemu:///system") is None  # not SQLite: the registry answers

    monkeypatch.setenv("KVMGR_DB_URL", f"sqlite:///{tmp_path / 'q' / 'kvmgr.db'}")
    assert quick_uri(None, "qemu:///system") == "qemu:///system"  # no store yet
    assert quick_uri("h0", "qemu:///system") is None
    store = Store(database_url())
    registry = HostRegistry(store)
    registry.add("h0", hosts[0])
    registry.add("h1", hosts[1])
    assert quick_uri("h1", "x") == hosts[1] == registry.get("h1").uri
    assert quick_uri("nope", "x") is None
    assert quick_uri(None, "x") is None  # two hosts, no default, no local: registry's error
    with pytest.raises(InvalidInput):
        registry.default()
    registry.set("h1", default=True)
    assert quick_uri(None, "x") == registry.default().uri == hosts[1]
    registry.set("h1", default=False)
    registry.ensure_uri(hosts[2], name=LOCAL)
    assert quick_uri(None, "x") == registry.default().uri == hosts[2]
    store.dispose()


def test_fleet_of_an_empty_registry_is_the_local_daemon(
    store: Store, hosts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVMGR_URI", hosts[0])
    rows, down = HostRegistry(store).fleet_vms()
    assert ({row["host"] for row in rows}, len(rows), down) == ({LOCAL}, 5, [])
