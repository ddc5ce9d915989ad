"""Snapshots follow a migrated VM (issue 14): external chains move, internal ones are refused.

A running guest with two external snapshots, writing to its disk, moves over qemu+ssh; the
destination then lists both snapshots with the same parents and current one, reverting to the
first works there (the frozen layer came along intact), the disk's data is identical, and the
source has no domain, volume or snapshot record of it left.  A shut-off VM with external
snapshots moves offline the same way; one with an internal snapshot is refused with the reason.
A move aborted half way leaves the records on the source and nothing on the destination.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.errors import InvalidState
from kvmgr.host import lab as labs
from kvmgr.services import migration, snapshots, storage
from kvmgr.services.migration_checks import preflight
from kvmgr.units import MIB
from tests.integration.guest import GuestShell, demo_domain
from tests.lab.conftest import DISK_COUNTER, purge_prefix
from tests.lab.test_migration import _boot

PREFIX = "lab-msnap-"
POOL = "default"


@pytest.fixture
def clean(lab_ssh: list[Connection]) -> Iterator[None]:
    purge_prefix(lab_ssh, PREFIX, POOL)
    yield
    purge_prefix(lab_ssh, PREFIX, POOL)


def _volumes(conn: Connection) -> set[str]:
    pool = conn.virconn.storagePoolLookupByName(POOL)
    pool.refresh(0)
    return {vol.name() for vol in pool.listAllVolumes(0)}


def _snapshot_dir(lab: labs.Lab, index: int, name: str) -> Path:
    """Where host ``index``'s libvirtd keeps the VM's snapshot records (its /var/lib/libvirt)."""
    return lab.host(index).data / "lib" / "qemu" / "snapshot" / name


def _tree(conn: Connection, name: str) -> list[tuple[str, str | None, bool]]:
    return [(s.name, s.parent, s.current) for s in snapshots.list_snapshots(conn, name)]


def _sector(shell: GuestShell, sector: int, size: int = 16) -> str:
    return shell.run(f"dd if=/dev/vda bs=512 skip={sector} count=1 2>/dev/null | head -c {size}")


def test_running_vm_with_two_external_snapshots_moves_with_its_chain(
    lab: labs.Lab, lab_ssh: list[Connection], demo_iso: Path, clean: None
) -> None:
    name = f"{PREFIX}live"
    src, dst = lab_ssh[0], lab_ssh[1]
    with _boot(src, name, demo_iso) as shell:
        shell.run("echo state-one-data | dd of=/dev/vda bs=512 seek=200 conv=fsync 2>/dev/null")
        snapshots.create_snapshot(src, name, "one", disk_only=True)
        shell.run("echo state-two-data | dd of=/dev/vda bs=512 seek=200 conv=fsync 2>/dev/null")
        snapshots.create_snapshot(src, name, "two", disk_only=True)
        shell.run("dd if=/dev/urandom of=/dev/vda bs=64k seek=16 count=16 conv=fsync 2>/dev/null")
        block = shell.run("dd if=/dev/vda bs=64k skip=16 count=16 2>/dev/null | md5sum")
        shell.run(DISK_COUNTER)
        time.sleep(1)
    tree = _tree(src, name)
    assert tree == [("one", None, False), ("two", "one", True)]
    layers = {f"{name}.qcow2", f"{name}.one.vda.qcow2", f"{name}.two.vda.qcow2"}
    assert layers <= _volumes(src)
    assert _snapshot_dir(lab, 1, name).is_dir()

    check = preflight(src, dst, name)
    assert check.ok, check.problems
    assert check.snapshots == ["one", "two"] and check.current_snapshot == "two"
    assert [layer.volume for layer in check.layers] == [f"{name}.qcow2", f"{name}.one.vda.qcow2"]
    assert all(layer.owned and not layer.present for layer in check.layers)
    assert any("external snapshot(s) (one, two) move with the VM" in w for w in check.warnings)

    samples: list[migration.Progress] = []
    options = migration.MigrateOptions(dest_address=lab.host(2).address)
    result = migration.migrate(src, dst, name, options, progress=samples.append)
    assert result.mode == "live" and result.snapshots == ["one", "two"]
    # Both frozen layers were copied and checked; only the top was mirrored (its size, not all).
    assert [line.split(":")[0] for line in result.checked] == [
        f"layer /var/lib/libvirt/images/{name}.qcow2",
        f"layer /var/lib/libvirt/images/{name}.one.vda.qcow2",
    ]
    assert any(s.disk_total for s in samples)
    # The source keeps nothing: no domain, no volume, no snapshot record.
    with pytest.raises(libvirt.libvirtError):
        src.virconn.lookupByName(name)
    assert not layers & _volumes(src)
    assert not _snapshot_dir(lab, 1, name).exists()
    assert layers <= _volumes(dst)
    assert _tree(dst, name) == tree  # same parents, same current
    with GuestShell.open(dst, name) as moved:
        moved.session.write(b"\r")
        log = [int(n) for n in moved.run("cat /tmp/counter.log").split()]
        assert log == list(range(1, len(log) + 1))  # the guest went on writing, no restart
        assert moved.run("dd if=/dev/vda bs=64k skip=16 count=16 2>/dev/null | md5sum") == block
        assert _sector(moved, 200, 14) == "state-two-data"
    # The chain is whole there: reverting to the first snapshot brings its data back.
    snapshots.revert_snapshot(dst, name, "one", force=True)
    assert [c for _n, _p, c in _tree(dst, name)] == [True, False]
    dst.virconn.lookupByName(name).create()
    with GuestShell.open(dst, name) as shell:
        shell.wait_ready()
        assert _sector(shell, 200, 14) == "state-one-data"
    print(
        f"live move with 2 snapshots: {result.seconds:.1f} s, downtime {result.downtime_ms} ms, "
        f"{result.data_bytes // MIB} MiB planned"
    )


def _shut_off_vm(conn: Connection, name: str) -> str:
    ref = storage.create_volume(conn, POOL, f"{name}.qcow2", 32 * MIB, "qcow2")
    domain = demo_domain(conn, name, "/nonexistent.iso", disk_path=ref.path)
    for cdrom in [d for d in domain.devices.disks if d.device == "cdrom"]:
        domain.devices.disks.remove(cdrom)
    conn.virconn.defineXML(domain.to_xml())
    return ref.path


def _head(conn: Connection, path: str, size: int) -> bytes:
    vol = conn.virconn.storageVolLookupByPath(path)
    stream = conn.virconn.newStream(0)
    vol.download(stream, 0, size, 0)
    got = b""
    while len(got) < size:
        chunk = stream.recv(size - len(got))
        if not chunk:
            break
        got += chunk
    stream.finish()
    return got


def test_offline_move_keeps_external_snapshots_and_internal_ones_are_refused(
    lab: labs.Lab, lab_ssh: list[Connection], clean: None
) -> None:
    src, dst = lab_ssh[0], lab_ssh[2]
    name = f"{PREFIX}off"
    _shut_off_vm(src, name)
    snapshots.create_snapshot(src, name, "a", disk_only=True)
    snapshots.create_snapshot(src, name, "b", disk_only=True)
    tree = _tree(src, name)
    heads = {
        path: _head(src, path, 4096)
        for path in (f"/var/lib/libvirt/images/{name}{s}.qcow2" for s in ("", ".a.vda", ".b.vda"))
    }
    result = migration.migrate(src, dst, name)
    assert result.mode == "offline" and result.snapshots == ["a", "b"]
    assert len(result.checked) == 3 and all("sha256" in line for line in result.checked)
    with pytest.raises(libvirt.libvirtError):
        src.virconn.lookupByName(name)
    assert not {p.rsplit("/", 1)[1] for p in heads} & _volumes(src)
    assert not _snapshot_dir(lab, 1, name).exists()
    assert _tree(dst, name) == tree
    for path, head in heads.items():  # the qcow2 headers, backing file names included
        assert _head(dst, path, 4096) == head

    internal = f"{PREFIX}int"
    _shut_off_vm(src, internal)
    snapshots.create_snapshot(src, internal, "inside")
    check = preflight(src, dst, internal, offline=True)
    (problem,) = [p for p in check.problems if "internal snapshot" in p]
    assert "refuses rather than converts" in problem
    assert f"kvmgr snap delete {internal} inside" in problem
    with pytest.raises(InvalidState, match="internal snapshot"):
        migration.migrate(src, dst, internal)
    assert src.virconn.lookupByName(internal).snapshotNum(0) == 1  # nothing moved or lost
    assert f"{internal}.qcow2" not in _volumes(dst)


def test_aborted_move_leaves_the_snapshots_on_the_source_and_nothing_on_the_destination(
    lab: labs.Lab, lab_ssh: list[Connection], demo_iso: Path, clean: None
) -> None:
    name = f"{PREFIX}abort"
    src, dst = lab_ssh[0], lab_ssh[1]
    _boot(src, name, demo_iso).close()  # booted and ready; no console needed here
    snapshots.create_snapshot(src, name, "kept", disk_only=True)
    cancel = threading.Event()

    def halfway(sample: migration.Progress) -> None:
        if sample.memory_done or sample.disk_done:
            cancel.set()

    options = migration.MigrateOptions(bandwidth_mib=2, dest_address=lab.host(2).address)
    with pytest.raises(InvalidState, match="aborted"):
        migration.migrate(src, dst, name, options, progress=halfway, cancel=cancel)
    # The records were taken off for the move and put back by the source's settle action.
    assert _tree(src, name) == [("kept", None, True)]
    assert src.virconn.lookupByName(name).isActive()
    assert {f"{name}.qcow2", f"{name}.kept.vda.qcow2"} <= _volumes(src)
    # The layer copied ahead and the top made for the mirror are gone from the destination.
    with pytest.raises(libvirt.libvirtError):
        dst.virconn.lookupByName(name)
    assert not {v for v in _volumes(dst) if v.startswith(name)}
