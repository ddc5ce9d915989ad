"""The host registry over the lab's daemons: registered over qemu+ssh and qemu+tls (the same
machine twice refused by its host_uuid), the VMs of every host listed in one command, and a
frozen daemon (SIGSTOP: it accepts connections and never answers) listed as unreachable within
the bound while the others list."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmgr.connect import Connection
from kvmgr.control.hosts import HostRegistry, close_connections
from kvmgr.errors import AlreadyExists
from kvmgr.host import lab as labs
from kvmgr.store.db import Store
from kvmgr.units import MIB
from kvmgr.xml.domain import Domain
from tests.lab.conftest import remove_domain

PREFIX = "lab-t-fleet-"
SRC = Path(__file__).resolve().parents[2] / "src"
BOUND = 15.0  # ssh set-up on a loaded 2-CPU machine can take several seconds


def _define(conn: Connection, name: str) -> None:
    dom = Domain()
    dom.type = "qemu"
    dom.name = name
    dom.memory_bytes = dom.current_memory_bytes = 32 * MIB
    dom.vcpus = 1
    dom.os.type = "hvm"
    dom.os.arch = "x86_64"
    conn.virconn.defineXML(dom.to_xml())


@pytest.fixture
def fleet_db(tmp_path: Path, lab: labs.Lab, lab_ssh: list[Connection]) -> Iterator[str]:
    """A database with the lab's hosts registered (the second over tls, the others over ssh) and
    one VM defined on each."""
    url = f"sqlite:///{tmp_path / 'db' / 'kvmgr.db'}"
    registry = HostRegistry(Store(url))
    for index, host in enumerate(lab.hosts):
        uri = lab.tls_uri(host) if index == 1 else lab.ssh_uri(host)
        record = registry.add(f"n{index + 1}", uri, labels={"lab": lab.name})
        assert record.host_uuid == host.host_uuid
    with pytest.raises(AlreadyExists, match="same machine as host 'n1'"):
        registry.add("n1-again", lab.tls_uri(lab.hosts[0]))
    for index, conn in enumerate(lab_ssh):
        _define(conn, f"{PREFIX}n{index + 1}")
    try:
        yield url
    finally:
        for index, conn in enumerate(lab_ssh):
            remove_domain(conn, f"{PREFIX}n{index + 1}")
        close_connections()
        registry.store.dispose()


def _kvmgr(url: str, tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if k != "KVMGR_URI"}
    env.update(
        {
            "KVMGR_DB_URL": url,
            "KVMGR_STATE_DIR": str(tmp / "state"),
            "KVMGR_HOST_TIMEOUT": str(BOUND),
            "PYTHONPATH": str(SRC),
        }
    )
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "kvmgr.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return done, time.monotonic() - began


def test_vms_of_every_host_in_one_command_and_a_frozen_daemon_is_down_in_time(
    lab: labs.Lab, fleet_db: str, tmp_path: Path
) -> None:
    listed, usual = _kvmgr(
        fleet_db, tmp_path, "vm", "list", "--all-hosts", "--no-ips", "-o", "json"
    )
    assert listed.returncode == 0, listed.stderr
    ours = {
        (r["host"], r["name"])
        for r in json.loads(listed.stdout)
        if (r.get("name") or "").startswith(PREFIX)
    }
    count = len(lab.hosts)
    assert ours == {(f"n{i}", f"{PREFIX}n{i}") for i in range(1, count + 1)}

    hosts, _ = _kvmgr(fleet_db, tmp_path, "host", "list", "-o", "json")
    states = [(h["name"], h["state"], h.get("error")) for h in json.loads(hosts.stdout)]
    assert states == [(f"n{i}", "up", None) for i in range(1, count + 1)]

    frozen_host = f"n{count}"
    pid = int(lab.hosts[-1].pidfiles["libvirtd"].read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        frozen, took = _kvmgr(
            fleet_db, tmp_path, "vm", "list", "--all-hosts", "--no-ips", "-o", "json"
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    assert frozen.returncode == 0, frozen.stderr
    rows = json.loads(frozen.stdout)
    listed_hosts = {r["host"] for r in rows if (r.get("name") or "").startswith(PREFIX)}
    assert listed_hosts == {f"n{i}" for i in range(1, count)}
    down = [r for r in rows if r["state"] == "unreachable"]
    assert [r["host"] for r in down] == [frozen_host] and f"{BOUND:g} s" in down[0]["error"]
    # the frozen host adds at most the bound (plus scheduling slack on a loaded 2-CPU machine)
    print(f"all hosts up: {usual:.2f} s; one frozen: {took:.2f} s (bound {BOUND:g} s)")
    assert took < usual + BOUND + 2, (usual, took)


def test_setup_over_ssh_reads_a_lab_host_for_real(lab: labs.Lab, tmp_path: Path) -> None:
    """``host add NAME ssh://... --setup`` against a lab host over real ssh (the lab's key and
    ssh wrapper, passed the way libvirt takes them): the facts are that host's, and the target
    registers as the same qemu+ssh URI the lab gives."""
    from kvmgr.host.osrelease import read_os_release
    from kvmgr.host.remote_setup import SshTarget, remote_facts
    from kvmgr.host.setup import gather_facts

    host = lab.hosts[0]
    uri = f"ssh://root@{host.address}?keyfile={lab.ssh_key}&command={lab.ssh_command}"
    target = SshTarget.parse(uri)
    assert target.libvirt_uri() == lab.ssh_uri(host)
    facts = remote_facts(target)
    assert facts.os_release == read_os_release()  # the lab's hosts share this machine's files
    assert facts.installed == gather_facts().installed
    url = f"sqlite:///{tmp_path / 'db' / 'kvmgr.db'}"
    added, _ = _kvmgr(url, tmp_path, "host", "add", "n1", uri, "--setup", "-o", "json")
    if facts.systemd:
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["uri"] == lab.ssh_uri(host)
    else:  # this machine runs its daemons without systemd: kvmgr says so and what to do
        assert added.returncode == 1
        assert "has no systemd" in added.stderr and "qemu+ssh://root@" in added.stderr
