"""Storage against the real daemon (qemu:///system): sparse streams, resizing, in-use refusals.

Everything lives in pool ``t-stor-int`` in a temporary directory, removed at the end even when a
test fails.  A VM that is defined (never started) makes a volume "in use".
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from typer.testing import CliRunner

from kvmgr.cli.common import state
from kvmgr.cli.main import app
from kvmgr.connect import Connection, open_connection
from kvmgr.errors import AlreadyExists, InvalidInput, InvalidState
from kvmgr.services import storage, storage_pools
from kvmgr.units import MIB
from kvmgr.xml.domain import Disk, Domain

pytestmark = pytest.mark.integration

POOL = "t-stor-int"
VM = "t-stor-vm"


def _drop_vm(conn: Connection) -> None:
    try:
        dom = conn.virconn.lookupByName(VM)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefine()


def _drop_pool(conn: Connection) -> None:
    try:
        pool = conn.virconn.storagePoolLookupByName(POOL)
    except libvirt.libvirtError:
        return
    if not pool.isActive():
        pool.create(0)
    for vol in pool.listAllVolumes(0):
        vol.delete(0)
    pool.destroy()
    pool.delete(0)
    pool.undefine()


@pytest.fixture(scope="module")
def conn() -> Iterator[Connection]:
    connection = open_connection("qemu:///system")
    yield connection
    connection.close()


@pytest.fixture
def pool_dir(conn: Connection, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pool"
    storage_pools.create_pool(conn, POOL, str(path))
    try:
        yield path
    finally:
        _drop_vm(conn)
        _drop_pool(conn)


def _sparse_file(path: Path) -> Path:
    """64 MiB with two data regions: 300 KB of random bytes at 1 MiB, 5 KB of text at 40 MiB."""
    with path.open("wb") as handle:
        handle.truncate(64 * MIB)
        handle.seek(1 * MIB)
        handle.write(os.urandom(300_000))
        handle.seek(40 * MIB)
        handle.write(b"kvmgr" * 1000)
    return path


def _sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def test_upload_download_round_trip_keeps_bytes_and_holes(
    conn: Connection, pool_dir: Path, tmp_path: Path
) -> None:
    source = _sparse_file(tmp_path / "source.img")
    reports: list[tuple[int, int]] = []
    info = storage.upload_volume(
        conn, POOL, "up.img", str(source), progress=lambda d, t: reports.append((d, t))
    )
    assert (info.capacity, info.format) == (64 * MIB, "raw")
    assert reports[-1] == (64 * MIB, 64 * MIB)
    uploaded = Path(info.path)
    assert _sha256(uploaded) == _sha256(source)
    # sparse on the daemon side: as few blocks as the source, far from 64 MiB
    assert uploaded.stat().st_blocks == source.stat().st_blocks
    assert uploaded.stat().st_blocks * 512 < 1 * MIB

    target = tmp_path / "down.img"
    assert storage.download_volume(conn, POOL, "up.img", str(target)) == 64 * MIB
    assert _sha256(target) == _sha256(source)
    assert target.stat().st_blocks == source.stat().st_blocks
    with pytest.raises(AlreadyExists):
        storage.download_volume(conn, POOL, "up.img", str(target))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kvmgr-download-")]


def test_upload_detects_qcow2_and_refuses_a_too_small_volume(
    conn: Connection, pool_dir: Path, tmp_path: Path
) -> None:
    made = storage.create_pool_volume(conn, POOL, "made.qcow2", "4M")
    qcow = tmp_path / "copy.qcow2"
    storage.download_volume(conn, POOL, "made.qcow2", str(qcow))
    info = storage.upload_volume(conn, POOL, "copy.qcow2", str(qcow))
    assert info.format == "qcow2"  # libvirt probed the uploaded bytes
    small = storage.create_pool_volume(conn, POOL, "small.img", "64K", "raw")
    with pytest.raises(InvalidInput, match="larger than volume"):
        storage.upload_volume(conn, POOL, "small.img", str(_sparse_file(tmp_path / "big.img")))
    assert made.format == "qcow2" and small.capacity == 64 * 1024


def test_resize_grows_and_shrinks_only_when_asked(conn: Connection, pool_dir: Path) -> None:
    storage.create_pool_volume(conn, POOL, "r.img", "8M", "raw")
    assert storage.resize_volume(conn, POOL, "r.img", "16M").capacity == 16 * MIB
    assert (pool_dir / "r.img").stat().st_size == 16 * MIB
    with pytest.raises(InvalidState, match="--shrink"):
        storage.resize_volume(conn, POOL, "r.img", "4M")
    assert storage.resize_volume(conn, POOL, "r.img", "4M", shrink=True).capacity == 4 * MIB
    assert (pool_dir / "r.img").stat().st_size == 4 * MIB


def _define_vm_using(conn: Connection, path: str) -> None:
    dom = Domain()
    dom.type = "qemu"
    dom.name = VM
    dom.memory_bytes = 64 * MIB
    dom.vcpus = 1
    dom.os.type = "hvm"
    dom.os.arch = "x86_64"
    disk = Disk()
    disk.type, disk.device = "file", "disk"
    disk.driver_name, disk.driver_type = "qemu", "qcow2"
    disk.source_file = path
    disk.target_dev, disk.target_bus = "vda", "virtio"
    dom.devices.disks.append(disk)
    conn.virconn.defineXML(dom.to_xml())


def test_volumes_a_vm_uses_survive_every_delete(conn: Connection, pool_dir: Path) -> None:
    used = storage.create_pool_volume(conn, POOL, "used.qcow2", "16M")
    storage.create_pool_volume(conn, POOL, "spare.qcow2", "16M")
    (pool_dir / "notes.txt").write_text("not kvmgr's")  # libvirt lists it as a volume too
    _define_vm_using(conn, used.path)
    assert storage.volume_info(conn, POOL, "used.qcow2").used_by == [f"VM {VM}"]
    with pytest.raises(InvalidState, match=VM):
        storage.delete_pool_volume(conn, POOL, "used.qcow2")
    with pytest.raises(InvalidState, match=VM):
        storage_pools.delete_pool(conn, POOL, force=True)
    assert Path(used.path).exists() and (pool_dir / "spare.qcow2").exists()
    _drop_vm(conn)
    with pytest.raises(InvalidState, match="add --force"):
        storage_pools.delete_pool(conn, POOL)
    result = storage_pools.delete_pool(conn, POOL, force=True)
    # Issue 11 hole 1: a forced delete removes volumes, never other files of the directory.
    assert result.deleted_volumes == ["spare.qcow2", "used.qcow2"]
    assert result.kept_files == ["notes.txt"]
    assert (pool_dir / "notes.txt").read_text() == "not kvmgr's"
    assert not result.directory_removed


def test_cli_upload_download(conn: Connection, pool_dir: Path, tmp_path: Path) -> None:
    source = _sparse_file(tmp_path / "cli.img")
    runner = CliRunner()
    try:
        up = runner.invoke(app, ["-c", "qemu:///system", "vol", "upload", POOL, "cli.img",
                                 str(source), "-o", "json"])  # fmt: skip
        assert up.exit_code == 0, up.output
        down = runner.invoke(app, ["-c", "qemu:///system", "vol", "download", POOL, "cli.img",
                                   str(tmp_path / "cli-down.img")])  # fmt: skip
        assert down.exit_code == 0, down.output
    finally:
        state.close()
    assert _sha256(tmp_path / "cli-down.img") == _sha256(source)
