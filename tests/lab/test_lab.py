"""The lab's hosts are distinct libvirt hosts, reached over qemu+ssh and qemu+tls, that run guests.

And the lab leaves nothing behind: ``scripts/lab down`` removes a lab's processes, namespaces,
mounts and files.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.host import lab as labs
from kvmgr.host.daemons import SYSTEM_URI, daemon_answers
from kvmgr.units import MIB
from kvmgr.xml.capabilities import Capabilities
from kvmgr.xml.domain import Domain
from tests.integration.guest import GuestShell, demo_domain
from tests.lab.conftest import remove_domain

PREFIX = "lab-t-"
SCRIPT = Path(__file__).parents[2] / "scripts" / "lab"


def _host_uuid(conn: Connection) -> str:
    return str(Capabilities.from_xml(conn.virconn.getCapabilities()).uuid)


def test_each_host_is_its_own_daemon_over_ssh_and_tls(
    lab: labs.Lab, lab_ssh: list[Connection], lab_tls: list[Connection]
) -> None:
    over_ssh = [_host_uuid(conn) for conn in lab_ssh]
    over_tls = [_host_uuid(conn) for conn in lab_tls]
    assert over_ssh == over_tls == [host.host_uuid for host in lab.hosts]
    assert len(set(over_ssh)) == len(lab.hosts)
    assert [conn.virconn.getHostname() for conn in lab_tls] == [h.name for h in lab.hosts]
    if daemon_answers(SYSTEM_URI):  # the machine's own daemon is another host again
        from kvmgr.connect import open_connection

        with open_connection(SYSTEM_URI, readonly=True) as system:
            assert _host_uuid(system) not in over_ssh


def test_a_vm_defined_on_one_host_is_seen_only_there(
    lab_ssh: list[Connection], lab_tls: list[Connection]
) -> None:
    name = f"{PREFIX}only-h1"
    dom = Domain()
    dom.type = "qemu"
    dom.name = name
    dom.memory_bytes = dom.current_memory_bytes = 32 * MIB
    dom.vcpus = 1
    dom.os.type = "hvm"
    dom.os.arch = "x86_64"
    try:
        lab_ssh[0].virconn.defineXML(dom.to_xml())
        assert lab_tls[0].virconn.lookupByName(name).UUIDString()
        for conn in [*lab_ssh[1:], *lab_tls[1:]]:
            with pytest.raises(libvirt.libvirtError) as err:
                conn.virconn.lookupByName(name)
            assert err.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
    finally:
        remove_domain(lab_ssh[0], name)


def test_a_guest_boots_on_a_lab_host(
    lab: labs.Lab, lab_tls: list[Connection], demo_iso: Path
) -> None:
    conn = lab_tls[1]
    name = f"{PREFIX}boot"
    try:
        dom = conn.virconn.defineXML(demo_domain(conn, name, str(demo_iso)).to_xml())
        assert "<domain type='qemu'" in dom.XMLDesc(0).replace('"', "'")
        dom.create()
        with GuestShell.open(conn, name) as shell:
            ip = shell.wait_ready()
            assert ip.startswith("192.168.122.")  # DHCP from the host's own default network
            assert shell.run("echo $((6 * 7))") == "42"
        # The guest's QEMU runs in that host's network namespace, not the machine's.
        pid = int(Path(lab.host(2).data / "run" / "qemu" / f"{name}.pid").read_text())
        ns = os.stat(f"/proc/{pid}/ns/net").st_ino
        assert ns == os.stat(labs.NETNS_DIR / lab.host(2).name).st_ino
    finally:
        remove_domain(conn, name)


def test_down_removes_a_lab_built_by_the_script() -> None:
    slot = 9
    name = labs.lab_name(slot)
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", _python())}
    up = subprocess.run(
        [str(SCRIPT), "up", "--hosts", "1", "--slot", str(slot), "--json"],
        check=False, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        built = labs.load(name)
        host = built.hosts[0]
        pids = [int(p.read_text()) for p in host.pidfiles.values()]
        assert daemon_answers(host.local_uri)
    finally:
        down = subprocess.run(
            [str(SCRIPT), "down", "--slot", str(slot)],
            check=False, capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert not any(labs.NETNS_DIR.glob(f"{name}*"))
    assert not (labs.LAB_RUN / name).exists()
    assert not (labs.LAB_DATA / name).exists()
    assert not Path(f"/sys/class/net/{name}-root").exists()
    assert not any(labs.process_alive(pid) for pid in pids)
    assert f"/{name}/" not in Path("/proc/self/mountinfo").read_text()


def _python() -> str:
    import sys

    return sys.executable
