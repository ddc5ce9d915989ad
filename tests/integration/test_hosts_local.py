"""The host registry with the real daemon as 'local': registered on first use, its facts from
libvirt and the functional probe, the same VMs through --host as through -c, and a dead host
listed as down within the bound while local lists."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from kvmgr.control.hosts import HostRegistry, close_connections
from kvmgr.store.db import Store

SRC = Path(__file__).resolve().parents[2] / "src"
BOUND = 5.0


def _kvmgr(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KVMGR_URI", "KVMGR_DB_URL")}
    env.update(
        {
            "KVMGR_STATE_DIR": str(tmp / "state"),
            "KVMGR_HOST_TIMEOUT": str(BOUND),
            "PYTHONPATH": str(SRC),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "kvmgr.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_the_local_daemon_is_a_host(libvirt_uri: str, tmp_path: Path) -> None:
    listed = _kvmgr(tmp_path, "host", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    [local] = json.loads(listed.stdout)  # nothing registered: 'local', on first use
    assert (local["name"], local["uri"], local["state"]) == ("local", libvirt_uri, "up")
    assert local["domain_type"] in ("kvm", "qemu") and local["domain_type_reason"]
    assert local["hypervisor"] == "qemu" and local["hypervisor_version"].count(".") == 2
    assert local["cpus"] >= 1 and 0 < local["memory_free"] <= local["memory_total"]
    assert local["host_uuid"]  # learnt from its first answer

    info = json.loads(_kvmgr(tmp_path, "host", "info", "local", "-o", "json").stdout)
    assert info["host_uuid"] == local["host_uuid"] == info["machine_identity"]
    assert info["machine_types"]

    by_host = json.loads(_kvmgr(tmp_path, "--host", "local", "vm", "list", "-o", "json").stdout)
    direct = json.loads(_kvmgr(tmp_path, "-c", libvirt_uri, "vm", "list", "-o", "json").stdout)
    assert [vm["uuid"] for vm in by_host] == [vm["uuid"] for vm in direct]
    # the same daemon under another name is refused by its identity
    again = _kvmgr(tmp_path, "host", "add", "again", "qemu+unix:///system")
    assert again.returncode == 1 and "same machine as host 'local'" in again.stderr


def test_a_dead_host_is_down_within_the_bound_while_local_lists(
    libvirt_uri: str, tmp_path: Path
) -> None:
    registry = HostRegistry(Store(f"sqlite:///{tmp_path / 'state' / 'db' / 'kvmgr.db'}"))
    registry.ensure_uri(libvirt_uri, name="local")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry.add(
        "t-hosts-dead", f"qemu+tcp://127.0.0.1:{port}/system", insecure_transport=True, verify=False
    )
    close_connections()
    registry.store.dispose()
    began = time.monotonic()
    listed = _kvmgr(tmp_path, "vm", "list", "--all-hosts", "--no-ips", "-o", "json")
    took = time.monotonic() - began
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["host"] for r in rows if r["state"] == "unreachable"] == ["t-hosts-dead"]
    assert all(r["host"] == "local" for r in rows if r["state"] != "unreachable")
    assert took < BOUND + 30, took  # the refusal is immediate; start-up on a loaded machine
