"""Snapshots on libvirt's test driver: tree, current marker, revert, delete, refusals."""

from __future__ import annotations

from collections.abc import Iterator

import libvirt
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import AlreadyExists, InvalidState, NotFound, Unsupported
from kvmgr.services import snapshots
from kvmgr.xml.domain import Disk, Domain

VM = "test"  # the test driver's running default domain


@pytest.fixture
def conn() -> Iterator[Connection]:
    connection = open_connection("test:///default")  # a fresh, private driver state per open
    # The test driver's default domain has a raw disk; internal snapshots need qcow2.
    dom = connection.virconn.lookupByName(VM)
    spec = Domain.from_xml(dom.XMLDesc(0))
    for disk in spec.devices.disks:
        disk.driver_name, disk.driver_type = "qemu", "qcow2"
    dom.destroy()
    connection.virconn.defineXML(spec.to_xml()).create()
    try:
        yield connection
    finally:
        _reset(connection)
        connection.close()


def _reset(connection: Connection) -> None:
    """test:///default is shared by the whole process: leave it as the next test expects."""
    dom = connection.virconn.lookupByName(VM)
    for snap in dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_ROOTS):
        snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN)
    spec = Domain.from_xml(dom.XMLDesc(0))
    meta = spec.kvmgr_metadata()
    if meta is not None:
        meta.template = None
        connection.virconn.defineXML(spec.to_xml())


def _names(conn: Connection) -> list[tuple[int, str, bool]]:
    return [(i.depth, i.name, i.current) for i in snapshots.list_snapshots(conn, VM)]


def test_tree_with_branches_current_marker_and_revert(conn: Connection) -> None:
    snapshots.create_snapshot(conn, VM, "base", description="first")
    snapshots.create_snapshot(conn, VM, "a1")
    snapshots.revert_snapshot(conn, VM, "base", force=True)
    snapshots.create_snapshot(conn, VM, "b1")
    tree = _names(conn)
    assert tree[0] == (0, "base", False)
    assert sorted(tree[1:]) == [(1, "a1", False), (1, "b1", True)]
    info = snapshots.snapshot_info(conn, VM, "base")
    assert sorted(info.children) == ["a1", "b1"]
    assert info.kind == "internal" and info.description == "first" and info.state == "running"
    snapshots.revert_snapshot(conn, VM, "a1", force=True)
    assert [n for _d, n, cur in _names(conn) if cur] == ["a1"]


def test_delete_middle_keeps_children_and_children_flag_removes_subtree(conn: Connection) -> None:
    for name in ("s1", "s2", "s3"):
        snapshots.create_snapshot(conn, VM, name)
    assert snapshots.delete_snapshot(conn, VM, "s2") == ["s2"]
    assert snapshots.snapshot_info(conn, VM, "s3").parent == "s1"
    assert snapshots.delete_snapshot(conn, VM, "s1", children=True) == ["s1", "s3"]
    assert snapshots.list_snapshots(conn, VM) == []


def test_running_vm_revert_needs_force(conn: Connection) -> None:
    snapshots.create_snapshot(conn, VM, "s1")
    with pytest.raises(InvalidState, match="--force"):
        snapshots.revert_snapshot(conn, VM, "s1")


def test_duplicate_missing_and_bad_names(conn: Connection) -> None:
    snapshots.create_snapshot(conn, VM, "s1")
    with pytest.raises(AlreadyExists):
        snapshots.create_snapshot(conn, VM, "s1")
    with pytest.raises(NotFound, match="snap list"):
        snapshots.revert_snapshot(conn, VM, "nope", force=True)
    with pytest.raises(Exception, match="not allowed"):
        snapshots.create_snapshot(conn, VM, "../evil")


def test_template_snapshots_are_refused(conn: Connection) -> None:
    dom = conn.virconn.lookupByName(VM)
    spec = Domain.from_xml(dom.XMLDesc(0))
    meta = spec.kvmgr_metadata(create=True)
    assert meta is not None
    meta.template = True
    conn.virconn.defineXML(spec.to_xml())
    with pytest.raises(InvalidState, match="template"):
        snapshots.create_snapshot(conn, VM, "s1")


def _domain(*disks: tuple[str, str], firmware: str | None = None) -> Domain:
    spec = Domain()
    spec.name = "x"
    spec.os.firmware = firmware
    for target, fmt in disks:
        disk = Disk()
        disk.device, disk.target_dev, disk.driver_type = "disk", target, fmt
        spec.devices.disks.append(disk)
    cdrom = Disk()
    cdrom.device, cdrom.driver_type, cdrom.readonly = "cdrom", "raw", True
    spec.devices.disks.append(cdrom)
    return spec


def test_choose_kind_explains_refusals() -> None:
    qcow = _domain(("vda", "qcow2"))
    assert snapshots.choose_kind(qcow, running=False, live=False, disk_only=False) == "internal"
    assert snapshots.choose_kind(qcow, running=True, live=True, disk_only=False) == "internal"
    assert snapshots.choose_kind(qcow, running=True, live=False, disk_only=True) == "external"
    with pytest.raises(InvalidState, match="not running"):
        snapshots.choose_kind(qcow, running=False, live=True, disk_only=False)
    raw = _domain(("vda", "qcow2"), ("vdb", "raw"))
    with pytest.raises(Unsupported, match="vdb") as err:
        snapshots.choose_kind(raw, running=False, live=False, disk_only=False)
    assert "--disk-only" in str(err.value)
    assert snapshots.choose_kind(raw, running=False, live=False, disk_only=True) == "external"
    uefi = _domain(("vda", "qcow2"), firmware="efi")
    with pytest.raises(Unsupported, match="UEFI"):
        snapshots.choose_kind(uefi, running=True, live=True, disk_only=False)
    assert snapshots.choose_kind(uefi, running=False, live=False, disk_only=False) == "internal"
