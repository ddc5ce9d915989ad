"""Storage service on libvirt's test driver, and the sparse-file stream callbacks on real files.

Each test gets a private test-driver host: pool t-stor-p (at /t-stor-p) holds used.img (a disk
of VM t-stor-vm1), base.qcow2 (the backing file of overlay.qcow2) and free.img.
Uploads and downloads need a real daemon: see tests/integration/test_storage.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import AlreadyExists, InvalidInput, InvalidState, NotFound, Unsupported
from kvmgr.services import storage, storage_pools, storage_transfer

NODE_XML = """<node>
  <pool type='dir'>
    <name>t-stor-p</name>
    <capacity unit='bytes'>107374182400</capacity>
    <allocation unit='bytes'>0</allocation>
    <available unit='bytes'>107374182400</available>
    <target><path>/t-stor-p</path></target>
    <volume type='file'>
      <name>used.img</name>
      <capacity unit='bytes'>1048576</capacity>
      <target><path>/t-stor-p/used.img</path><format type='raw'/></target>
    </volume>
    <volume type='file'>
      <name>base.qcow2</name>
      <capacity unit='bytes'>1048576</capacity>
      <target><path>/t-stor-p/base.qcow2</path><format type='qcow2'/></target>
    </volume>
    <volume type='file'>
      <name>overlay.qcow2</name>
      <capacity unit='bytes'>1048576</capacity>
      <target><path>/t-stor-p/overlay.qcow2</path><format type='qcow2'/></target>
      <backingStore><path>/t-stor-p/base.qcow2</path><format type='qcow2'/></backingStore>
    </volume>
    <volume type='file'>
      <name>free.img</name>
      <capacity unit='bytes'>1048576</capacity>
      <target><path>/t-stor-p/free.img</path><format type='raw'/></target>
    </volume>
  </pool>
  <pool type='dir'>
    <name>t-stor-empty</name>
    <capacity unit='bytes'>107374182400</capacity>
    <allocation unit='bytes'>0</allocation>
    <available unit='bytes'>107374182400</available>
    <target><path>/t-stor-empty</path></target>
  </pool>
  <domain type='test'>
    <name>t-stor-vm1</name>
    <memory>262144</memory>
    <vcpu>1</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/t-stor-p/used.img'/>
        <target dev='vda' bus='virtio'/>
      </disk>
    </devices>
  </domain>
</node>
"""


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    connection = open_connection(f"test://{node}")
    yield connection
    connection.close()


def _volumes(conn: Connection, pool: str) -> list[str]:
    return sorted(conn.virconn.storagePoolLookupByName(pool).listVolumes())


# ----------------------------------------------------------------------------- pools
def test_create_pool_and_its_refusals(conn: Connection) -> None:
    info = storage_pools.create_pool(conn, "t-stor-new", "/t-stor-new/")
    assert (info.name, info.type, info.path, info.active, info.autostart, info.volumes) == (
        "t-stor-new", "dir", "/t-stor-new", True, True, 0,
    )  # fmt: skip
    with pytest.raises(AlreadyExists):
        storage_pools.create_pool(conn, "t-stor-new", "/elsewhere")
    with pytest.raises(AlreadyExists, match="t-stor-p"):
        storage_pools.create_pool(conn, "t-stor-other", "/t-stor-p")
    with pytest.raises(InvalidInput):
        storage_pools.create_pool(conn, "t-stor-rel", "relative/path")
    with pytest.raises(Unsupported):
        storage_pools.create_pool(conn, "t-stor-lvm", "/dev/vg0", "logical")


def test_list_pools_counts_volumes(conn: Connection) -> None:
    counts = {info.name: info.volumes for info in storage_pools.list_pools(conn)}
    assert counts == {"t-stor-p": 4, "t-stor-empty": 0}
    with pytest.raises(NotFound):
        storage_pools.pool_info(conn, "t-stor-missing")


def test_pool_with_a_used_volume_is_never_deleted(conn: Connection) -> None:
    with pytest.raises(InvalidState, match=r"used\.img by VM t-stor-vm1"):
        storage_pools.delete_pool(conn, "t-stor-p", force=True)
    assert len(_volumes(conn, "t-stor-p")) == 4


def test_pool_with_volumes_needs_force_and_then_loses_only_its_volumes(
    conn: Connection,
) -> None:
    conn.virconn.lookupByName("t-stor-vm1").destroy()
    conn.virconn.lookupByName("t-stor-vm1").undefine()
    with pytest.raises(InvalidState, match=r"base\.qcow2 by volume t-stor-p/overlay\.qcow2"):
        storage_pools.delete_pool(conn, "t-stor-p", force=True)
    conn.virconn.storagePoolLookupByName("t-stor-p").storageVolLookupByName("overlay.qcow2").delete(
        0
    )
    with pytest.raises(InvalidState, match="holds 3 volume"):
        storage_pools.delete_pool(conn, "t-stor-p")
    result = storage_pools.delete_pool(conn, "t-stor-p", force=True)
    assert result.deleted_volumes == ["base.qcow2", "free.img", "used.img"]
    assert "t-stor-p" not in conn.virconn.listStoragePools()


def test_empty_pool_is_deleted_without_force(conn: Connection) -> None:
    result = storage_pools.delete_pool(conn, "t-stor-empty")
    assert result.deleted_volumes == []
    assert "t-stor-empty" not in (
        conn.virconn.listStoragePools() + conn.virconn.listDefinedStoragePools()
    )


# ----------------------------------------------------------------------------- volumes
def test_volume_list_names_the_users(conn: Connection) -> None:
    users = {vol.name: vol.used_by for vol in storage.list_volumes(conn, "t-stor-p")}
    assert users == {
        "used.img": ["VM t-stor-vm1"],
        "base.qcow2": ["volume t-stor-p/overlay.qcow2"],
        "overlay.qcow2": [],
        "free.img": [],
    }


def test_volume_create_info_delete(conn: Connection) -> None:
    made = storage.create_pool_volume(conn, "t-stor-empty", "disk.qcow2", "2G")
    assert (made.format, made.capacity, made.path) == (
        "qcow2",
        2 * 1024**3,
        "/t-stor-empty/disk.qcow2",
    )
    assert storage.volume_info(conn, "t-stor-empty", "disk.qcow2").used_by == []
    with pytest.raises(AlreadyExists):
        storage.create_pool_volume(conn, "t-stor-empty", "disk.qcow2", "1G")
    with pytest.raises(InvalidInput):
        storage.create_pool_volume(conn, "t-stor-empty", "bad.vmdk", "1G", "vmdk")
    with pytest.raises(InvalidInput):
        storage.create_pool_volume(conn, "t-stor-empty", "zero.img", "0")
    with pytest.raises(NotFound):
        storage.create_pool_volume(conn, "t-stor-missing", "x.img", "1G")
    storage.delete_pool_volume(conn, "t-stor-empty", "disk.qcow2")
    assert _volumes(conn, "t-stor-empty") == []


@pytest.mark.parametrize("name", ["used.img", "base.qcow2"])
def test_used_volumes_are_not_deleted(conn: Connection, name: str) -> None:
    with pytest.raises(InvalidState, match="used by"):
        storage.delete_pool_volume(conn, "t-stor-p", name)
    assert name in _volumes(conn, "t-stor-p")


def test_shrinking_needs_shrink_and_running_disks_are_not_resized(conn: Connection) -> None:
    with pytest.raises(InvalidState, match="--shrink"):
        storage.resize_volume(conn, "t-stor-p", "free.img", "512K")
    with pytest.raises(InvalidState, match="running VM t-stor-vm1"):
        storage.resize_volume(conn, "t-stor-p", "used.img", "2M")


# ----------------------------------------------------------------------------- sparse files
def _sections(path: Path) -> list[list[object]]:
    """Walk a file the way sparseSendAll does: ask for the section, then skip or read it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        sparse = storage_transfer._SparseFile(fd, path.stat().st_size, lambda _d, _t: None)
        sections: list[list[object]] = []
        while os.lseek(fd, 0, os.SEEK_CUR) < path.stat().st_size:
            in_data, length = sparse.hole(None, None)
            sections.append([in_data, length])
            if in_data:
                assert len(sparse.read(None, length, None)) == length
            else:
                sparse.skip(None, length, None)
        assert sparse.done == path.stat().st_size
        return sections
    finally:
        os.close(fd)


def test_hole_handler_reports_data_and_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    block = 1024 * 1024
    with path.open("wb") as handle:
        handle.truncate(8 * block)
        handle.seek(2 * block)
        handle.write(b"x" * block)
    assert _sections(path) == [[False, 2 * block], [True, block], [False, 5 * block]]


def test_receive_side_punches_holes(tmp_path: Path) -> None:
    path = tmp_path / "received.img"
    block = 1024 * 1024
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        sparse = storage_transfer._SparseFile(fd, 4 * block, lambda _d, _t: None)
        sparse.punch(None, block, None)
        sparse.write(None, b"y" * block, None)
        sparse.punch(None, 2 * block, None)
    finally:
        os.close(fd)
    assert path.stat().st_size == 4 * block
    assert path.stat().st_blocks * 512 < 2 * block  # only the written MiB is allocated
    assert path.read_bytes()[block : 2 * block] == b"y" * block


def test_detect_format(tmp_path: Path) -> None:
    qcow = tmp_path / "a.qcow2"
    qcow.write_bytes(b"QFI\xfb" + bytes(60))
    raw = tmp_path / "a.img"
    raw.write_bytes(bytes(64))
    assert (storage.detect_format(str(qcow)), storage.detect_format(str(raw))) == ("qcow2", "raw")
