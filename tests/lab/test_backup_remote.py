"""A VM on a second lab host backed up into a repository on this machine and restored on the
first (issue 15): the backup job's NBD server listens on lab host 2's address with TLS (the lab
gives its qemu a server certificate, backup_tls_x509_cert_dir), kvmgr reads it with the lab's
client certificate (the ``pkipath`` of the host's qemu+tls URI), and the restore uploads through
libvirt streams onto host 1.

Also: the incremental on the remote host reads only what changed; a port already taken on the
host is skipped; a backup that fails after its job started leaves nothing on the host (no job,
no new checkpoint, no scratch file) and no half point in the repository; a host over qemu+ssh is
refused with a hint.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.connect.connection import DOMAIN_TYPE_ENV
from kvmgr.control.backups import Backups
from kvmgr.control.plane import ControlPlane
from kvmgr.errors import InvalidInput, KvmgrError
from kvmgr.host import lab as labs
from kvmgr.services import storage, vms
from kvmgr.services.backup import backup as backup_service
from kvmgr.services.backup import export
from kvmgr.store.db import Store
from kvmgr.units import MIB
from tests.integration.backup_guest import guest_hash, image_hash, write_blocks
from tests.integration.guest import GuestShell, demo_domain
from tests.lab.conftest import purge_prefix

PREFIX = "lab-bk-"
GUEST = f"{PREFIX}guest"
POOL = "default"
BLOCK = 256 * 1024  # write_blocks writes 256 KiB at each offset


@pytest.fixture(scope="module")
def hosts(lab_tls: list[Connection]) -> Iterator[dict[str, Connection]]:
    by_name = {"h1": lab_tls[0], "h2": lab_tls[1]}
    purge_prefix(list(by_name.values()), PREFIX, POOL)
    yield by_name
    purge_prefix(list(by_name.values()), PREFIX, POOL)


@pytest.fixture(scope="module")
def backups(
    hosts: dict[str, Connection], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backups]:
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('bk-db') / 'kvmgr.db'}")
    face = Backups(ControlPlane(store, "test:bkremote", hosts.__getitem__))
    face.add_repo("main", str(tmp_path_factory.mktemp("bk-repo") / "repo"))
    yield face
    store.dispose()


@pytest.fixture(scope="module")
def guest(hosts: dict[str, Connection], demo_iso: Path) -> str:
    conn = hosts["h2"]
    ref = storage.create_volume(conn, POOL, f"{GUEST}.qcow2", 64 * MIB, "qcow2")
    # Module-scoped, so made before the lab's function-scoped TCG setting applies: set it here.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DOMAIN_TYPE_ENV, "qemu")
        spec = demo_domain(conn, GUEST, str(demo_iso), disk_path=ref.path)
    conn.virconn.defineXML(spec.to_xml()).create()
    return GUEST


def _leftovers(conn: Connection, name: str) -> dict[str, object]:
    """What a backup could leave on a host: a running job, checkpoints, scratch files."""
    dom = vms.lookup(conn, name)
    job = dom.jobStats(0).get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP
    pool = conn.virconn.storagePoolLookupByName(POOL)
    pool.refresh(0)
    scratch = sorted(v.name() for v in pool.listAllVolumes(0) if export.SCRATCH_MARK in v.name())
    checkpoints = sorted(cp.getName() for cp in dom.listAllCheckpoints(0))
    return {"job": job, "checkpoints": checkpoints, "scratch": scratch}


@contextlib.contextmanager
def _port_held(lab: labs.Lab, address: str, port: int) -> Iterator[None]:
    """A process in the host's network namespace listening on ``address:port``."""
    holder = subprocess.Popen(
        ["ip", "netns", "exec", lab.host(address).name, sys.executable, "-c",
         "import socket,sys,time; s=socket.socket(); "
         "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
         f"s.bind(({address!r}, {port})); s.listen(); print('up', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_remote_vm_backed_up_here_and_restored_on_another_host(
    lab: labs.Lab,
    hosts: dict[str, Connection],
    backups: Backups,
    guest: str,
    tmp_path: Path,
) -> None:
    source, target = hosts["h2"], hosts["h1"]
    hashes = [write_blocks(source, guest, [1, 7, 30])]
    uuid = vms.lookup(source, guest).UUIDString()
    # The port this VM's export tries first is taken on host 2: the backup moves to the next.
    refusals: list[bool] = []
    seen = export.port_taken

    def spied(err: KvmgrError | libvirt.libvirtError) -> bool:
        refusals.append(seen(err))
        return refusals[-1]

    with (
        _port_held(lab, lab.host(2).address, export.ports(uuid)[0]),
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr(export, "port_taken", spied)
        points = [backups.create("h2", guest)]
    assert refusals == [True]  # QEMU could not bind the first port; the second one served
    hashes.append(write_blocks(source, guest, [2, 50]))
    points.append(backups.create("h2", guest))

    assert [p["kind"] for p in points] == ["full", "incremental"]
    assert points[1]["bytes_read"] == 2 * BLOCK  # only what changed crossed the network
    manifest = backups.repository()[1].manifest(str(points[1]["id"]))
    assert manifest["export"] == "tls" and manifest["host"] == "h2"
    assert _leftovers(source, guest) == {
        "job": False,
        "checkpoints": [f"kvmgr-{points[1]['id']}"],
        "scratch": [],
    }
    assert all(verdict["ok"] for verdict in backups.verify())

    for number, (point, expected) in enumerate(zip(points, hashes, strict=True)):
        restored = backups.restore("h1", str(point["id"]), as_name=f"{PREFIX}r{number}")
        # host 1 has no VM of the UUID at first: the first restore keeps it, the second cannot
        assert restored["in_place"] is (number == 0)
        assert image_hash(target, restored["disks"]["vda"], tmp_path) == expected, point["id"]
    # the restored latest point boots on host 1, and its guest reads the data of that point
    vms.start(target, f"{PREFIX}r1")
    with GuestShell.open(target, f"{PREFIX}r1") as shell:
        shell.wait_ready()
        assert guest_hash(shell) == hashes[1]
    assert not vms.exists(target, guest)  # host 1 got the restored VMs only


def test_failed_remote_backup_leaves_nothing_on_the_host(
    hosts: dict[str, Connection],
    backups: Backups,
    guest: str,
) -> None:
    source = hosts["h2"]
    if not backups.points(guest):
        backups.create("h2", guest)  # this test alone: a chain to fail an incremental on
    before = _leftovers(source, guest)
    seen: dict[str, object] = {}

    def broken(*_args: object, **_kwargs: object) -> None:
        seen.update(_leftovers(source, guest))  # the job runs, scratch files exist
        raise KvmgrError("injected: the repository's disk failed")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KvmgrError, match="injected"):
        patch.setattr(backup_service.export, "connected", broken)
        backups.create("h2", guest)
    assert seen["job"] is True and seen["scratch"]  # there was something to clean up
    assert _leftovers(source, guest) == before  # and none of it is left
    _, repo = backups.repository()
    assert not any(entry.name.startswith(".") for entry in repo.points.iterdir())
    assert backups.points(guest)[-1]["state"] == "failed"
    again = backups.create("h2", guest)  # the chain still holds: the next one is incremental
    assert again["kind"] == "incremental"


def test_ssh_host_is_refused_before_anything_is_made(
    lab: labs.Lab, lab_ssh: list[Connection], backups: Backups, guest: str
) -> None:
    plane = ControlPlane(backups.plane.store, "test:bkremote", lambda _host: lab_ssh[1])
    before = _leftovers(lab_ssh[1], guest)
    with pytest.raises(InvalidInput, match="without TLS") as caught:
        Backups(plane).create("h2-ssh", guest)
    assert caught.value.hint and "qemu+tls://" in caught.value.hint
    assert _leftovers(lab_ssh[1], guest) == before
