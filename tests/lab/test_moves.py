"""The control plane's moves in the lab: ``kvmgr vm migrate --to auto`` (placement by labels,
its explanation, two journaled operations) and ``kvmgr host evacuate`` with an anti-affinity
group, refused while only two hosts can take its three VMs, done with three."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.control import moves
from kvmgr.control.hosts import HostRegistry, close_connections
from kvmgr.control.plane import ControlPlane
from kvmgr.errors import InvalidState
from kvmgr.host import lab as labs
from kvmgr.services import storage
from kvmgr.services.placement import Group, group_of, set_group
from kvmgr.store.db import Store
from kvmgr.units import MIB
from tests.integration.guest import GuestShell, demo_domain
from tests.lab.conftest import purge_prefix
from tests.lab.test_migration import POOL, _shut_off_domain, _uptime, _volumes

PREFIX = "lab-mv-"
SRC = Path(__file__).parents[2] / "src"


def kvmgr(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KVMGR_URI", "KVMGR_DB_URL")}
    env.update({"KVMGR_STATE_DIR": str(state), "PYTHONPATH": str(SRC)})
    return subprocess.run([sys.executable, "-m", "kvmgr.cli.main", *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False)  # fmt: skip


@pytest.fixture
def clean(lab_tls: list[Connection]) -> Iterator[None]:
    purge_prefix(lab_tls, PREFIX, POOL)
    yield
    purge_prefix(lab_tls, PREFIX, POOL)


def register_zoned_hosts(lab: labs.Lab, state: Path) -> None:
    """h1..h4 over TLS with zones a, b, c, b; h4 (the other zone b) in maintenance."""
    zones = {1: "a", 2: "b", 3: "c", 4: "b"}
    for host in lab.hosts:
        added = kvmgr(state, "host", "add", f"h{host.index}", lab.tls_uri(host), "--labels",
                      f"zone={zones[host.index]}")  # fmt: skip
        assert added.returncode == 0, added.stderr
    assert kvmgr(state, "host", "set", "h4", "--maintenance", "on").returncode == 0


def test_cli_migrates_a_running_vm_to_the_host_placement_picks(
    lab: labs.Lab, lab_tls: list[Connection], demo_iso: Path, tmp_path: Path, clean: None
) -> None:
    state = tmp_path / "state"
    register_zoned_hosts(lab, state)
    name = f"{PREFIX}cli"
    conn = lab_tls[0]
    ref = storage.create_volume(conn, POOL, f"{name}.qcow2", 64 * MIB, "qcow2")
    conn.virconn.defineXML(demo_domain(conn, name, str(demo_iso), disk_path=ref.path).to_xml())
    conn.virconn.lookupByName(name).create()
    with GuestShell.open(conn, name) as shell:
        shell.wait_ready()
        before = _uptime(shell)
    dry = kvmgr(state, "--host", "h1", "vm", "migrate", name, "--to", "auto", "--require",
                "zone=b", "--dry-run", "--explain")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "h2" in dry.stdout and "in maintenance" in dry.stdout  # h4 is zone=b but in maintenance
    assert "needs label zone=b, has zone=c" in dry.stdout
    assert conn.virconn.lookupByName(name).isActive()  # a dry run moves nothing
    moved = kvmgr(state, "--host", "h1", "vm", "migrate", name, "--to", "auto", "--require",
                  "zone=b", "-o", "json")  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout)
    assert report["to"] == "h2" and report["result"]["mode"] == "live"
    assert report["placement"][0]["host"] == "h2" and report["placement"][0]["eligible"]
    with pytest.raises(libvirt.libvirtError):
        conn.virconn.lookupByName(name)
    assert f"{name}.qcow2" not in _volumes(conn)
    with GuestShell.open(lab_tls[1], name) as shell:
        shell.session.write(b"\r")
        assert _uptime(shell) > before
    ops = json.loads(kvmgr(state, "ops", "list", "--all", "-o", "json").stdout)
    kinds = sorted((op["kind"], op["host"], op["state"]) for op in ops if op["target"] == name)
    assert kinds == [("migrate in", "h2", "done"), ("migrate out", "h1", "done")]
    # To a host in maintenance: refused before anything moves.
    refused = kvmgr(state, "--host", "h2", "vm", "migrate", name, "--to", "h4")
    assert refused.returncode == 1 and "host h4 is in maintenance" in refused.stderr


def test_evacuation_respects_anti_affinity(
    lab: labs.Lab, lab_tls: list[Connection], tmp_path: Path, clean: None
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'kvmgr.db'}")
    registry = HostRegistry(store)
    for host in lab.hosts:
        registry.add(f"h{host.index}", lab.tls_uri(host))
    plane = ControlPlane(store, "test", registry.connect)
    src = lab_tls[0]
    names = [f"{PREFIX}aa{i}" for i in range(3)]
    for name in names:
        path = storage.create_volume(src, POOL, f"{name}.img", 4 * MIB, "raw").path
        src.virconn.defineXML(_shut_off_domain(src, name, [path], "default").to_xml())
        set_group(src, name, Group("db", anti_affinity=True))
    registry.set("h4", maintenance=True)
    try:
        with pytest.raises(InvalidState, match=r"no host can take VM lab-mv-aa2: .*"
                           r"anti-affinity group db: lab-mv-aa\d is there"):  # fmt: skip
            moves.evacuate(plane, registry, "h1")
        assert not registry.get("h1").maintenance  # refused before anything changed
        assert {d.name() for d in src.virconn.listAllDomains(0)} >= set(names)
        registry.set("h4", maintenance=False)
        report = moves.evacuate(plane, registry, "h1")
        assert sorted(to for _vm, to, _live in report.plan.moves) == ["h2", "h3", "h4"]
        done = [o.report for o in report.moved if o.report]
        assert [r.result.mode for r in done if r.result] == ["offline"] * 3
        assert registry.get("h1").maintenance and report.empty
        assert not [d.name() for d in src.virconn.listAllDomains(0) if d.name() in names]
        for vm, to, _live in report.plan.moves:
            dom = lab_tls[int(to[1]) - 1].virconn.lookupByName(vm)
            group = group_of(dom)
            assert group is not None and group.anti_affinity  # the group moved with the VM
    finally:
        close_connections()
        store.dispose()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_a_killed_migrate_leaves_the_vm_on_the_source_and_recovery_cleans_the_target(
    lab: labs.Lab,
    lab_tls: list[Connection],
    demo_iso: Path,
    tmp_path: Path,
    clean: None,
    sig: signal.Signals,
) -> None:
    """kill -9: libvirt aborts the job of a client that went away, recovery removes the target's
    volume.  Ctrl-C: kvmgr aborts the job itself and undoes in-process (exit status 130)."""
    state = tmp_path / "state"
    for index in (1, 2):
        host = lab.host(index)
        assert kvmgr(state, "host", "add", f"h{index}", lab.tls_uri(host)).returncode == 0
    name = f"{PREFIX}kill"
    src, dst = lab_tls[0], lab_tls[1]
    ref = storage.create_volume(src, POOL, f"{name}.qcow2", 64 * MIB, "qcow2")
    src.virconn.defineXML(demo_domain(src, name, str(demo_iso), disk_path=ref.path).to_xml())
    dom = src.virconn.lookupByName(name)
    dom.create()
    with GuestShell.open(src, name) as shell:
        shell.wait_ready()
        before = _uptime(shell)
    env = {k: v for k, v in os.environ.items() if k not in ("KVMGR_URI", "KVMGR_DB_URL")}
    env.update({"KVMGR_STATE_DIR": str(state), "PYTHONPATH": str(SRC)})
    cli = subprocess.Popen(
        [sys.executable, "-m", "kvmgr.cli.main", "--host", "h1", "vm", "migrate", name,
         "--to", "h2", "--bandwidth", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
            assert cli.poll() is None, "the migration ended before it could be killed"
            assert time.monotonic() < deadline, "the migration job never started"
            time.sleep(0.2)
        assert f"{name}.qcow2" in _volumes(dst)  # the target volume was made
    finally:
        cli.send_signal(sig)
        status = cli.wait(timeout=120)
    if sig == signal.SIGINT:
        assert status == 130  # aborted, undone, said so
    # libvirt aborts a migration whose client went away; the VM goes on running on the source.
    deadline = time.monotonic() + 60
    while dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert dom.isActive() and dom.isPersistent()
    recovered = kvmgr(state, "ops", "recover")
    assert recovered.returncode == 0, recovered.stderr
    ops = json.loads(kvmgr(state, "ops", "list", "--all", "-o", "json").stdout)
    states = sorted((op["kind"], op["state"]) for op in ops if op["target"] == name)
    assert [kind for kind, _state in states] == ["migrate in", "migrate out"]
    assert all(state != "running" for _kind, state in states), states
    assert f"{name}.qcow2" not in _volumes(dst)  # recovery removed what the move made there
    with pytest.raises(libvirt.libvirtError):
        dst.virconn.lookupByName(name)
    assert f"{name}.qcow2" in _volumes(src)  # the source's disk stays: its VM uses it
    with GuestShell.open(src, name) as shell:
        shell.session.write(b"\r")
        assert _uptime(shell) > before
