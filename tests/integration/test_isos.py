"""The ISO library against the real libvirt daemon (qemu:///system).

Everything lives in the pool ``t-iso-pool`` (at /var/lib/kvmgr/t-iso-pool), removed at the end.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pycdlib
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import AlreadyExists, InvalidInput, InvalidState, NotFound
from kvmgr.services import isos
from kvmgr.xml.domain import Disk, Domain

pytestmark = pytest.mark.integration

POOL = "t-iso-pool"
VM = "t-iso-vm"


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def _drop_vm(conn: Connection) -> None:
    try:
        dom = conn.virconn.lookupByName(VM)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefine()


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Connection]:
    with pytest.MonkeyPatch.context() as patch:
        # A private cache, so the test that forgets cached descriptors touches only its own.
        patch.setenv("KVMGR_CACHE_DIR", str(tmp_path_factory.mktemp("t-iso-cache")))
        yield from _connection()


def _connection() -> Iterator[Connection]:
    connection = open_connection("qemu:///system")
    _drop_vm(connection)
    _drop_pool(connection)
    try:
        yield connection
    finally:
        _drop_vm(connection)
        _drop_pool(connection)
        connection.close()


@pytest.fixture(scope="module")
def alma_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ISO 9660 image with AlmaLinux 9's volume id and 3 MiB of random content."""
    path = tmp_path_factory.mktemp("t-iso") / "alma.iso"
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="AlmaLinux-9-3-x86_64-dvd", sys_ident="LINUX")
    payload = os.urandom(3 * 1024 * 1024 + 123)
    iso.add_fp(io.BytesIO(payload), len(payload), "/PAYLOAD.BIN;1")
    iso.write(str(path))
    iso.close()
    return path


def _define_vm_with_cdrom(conn: Connection, iso_path: str) -> None:
    dom = Domain()
    dom.type = "qemu"
    dom.name = VM
    dom.memory_bytes = 64 * 1024 * 1024
    dom.vcpus = 1
    dom.os.type = "hvm"
    dom.os.arch = "x86_64"
    cdrom = Disk()
    cdrom.type = "file"
    cdrom.device = "cdrom"
    cdrom.driver_name = "qemu"
    cdrom.driver_type = "raw"
    cdrom.source_file = iso_path
    cdrom.target_dev = "sda"
    cdrom.target_bus = "sata"
    cdrom.readonly = True
    dom.devices.disks.append(cdrom)
    conn.virconn.defineXML(dom.to_xml())


def test_import_list_delete_lifecycle(conn: Connection, alma_iso: Path) -> None:
    info = isos.import_iso(conn, alma_iso, "t-iso-alma.iso", pool=POOL)
    assert info.os_id == "almalinux9" and info.matched
    assert info.size == alma_iso.stat().st_size
    # Byte-identical after the trip through the libvirt stream.
    assert _sha256(info.path) == _sha256(alma_iso)

    listed = {item.name: item for item in isos.list_isos(conn, POOL)}
    assert listed["t-iso-alma.iso"].os_id == "almalinux9"
    assert listed["t-iso-alma.iso"].os_name == "AlmaLinux 9"
    assert isos.resolve_iso(conn, "t-iso-alma.iso", pool=POOL) == info.path

    with pytest.raises(AlreadyExists):
        isos.import_iso(conn, alma_iso, "t-iso-alma.iso", pool=POOL)

    _define_vm_with_cdrom(conn, info.path)  # defined, never started
    with pytest.raises(InvalidState, match=VM):
        isos.delete_iso(conn, "t-iso-alma.iso", POOL)
    assert os.path.exists(info.path)

    _drop_vm(conn)
    isos.delete_iso(conn, "t-iso-alma.iso", POOL)
    assert not os.path.exists(info.path)
    assert "t-iso-alma.iso" not in {item.name for item in isos.list_isos(conn, POOL)}
    with pytest.raises(NotFound):
        isos.resolve_iso(conn, "t-iso-alma.iso", pool=POOL)


def test_list_detects_iso_it_has_not_seen(conn: Connection, alma_iso: Path) -> None:
    info = isos.import_iso(conn, alma_iso, "t-iso-unseen.iso", pool=POOL)
    try:
        # Forget what import cached: list must read the descriptor from the volume itself.
        isos._cache_file().unlink(missing_ok=True)
        listed = {item.name: item for item in isos.list_isos(conn, POOL)}
        assert listed["t-iso-unseen.iso"].os_id == "almalinux9"
    finally:
        isos.delete_iso(conn, info.name, POOL)


def test_non_iso_refused_and_leaves_nothing(conn: Connection, tmp_path: Path) -> None:
    fake = tmp_path / "fake.iso"
    fake.write_bytes(os.urandom(100 * 1024))
    with pytest.raises(InvalidInput, match="not an ISO image"):
        isos.import_iso(conn, fake, "t-iso-fake.iso", pool=POOL)
    assert "t-iso-fake.iso" not in {item.name for item in isos.list_isos(conn, POOL)}


def test_failed_upload_deletes_partial_volume(conn: Connection, alma_iso: Path) -> None:
    def fail_midway(sent: int, total: int) -> None:
        raise RuntimeError(f"interrupted after {sent} of {total} bytes")

    with pytest.raises(RuntimeError, match="interrupted"):
        isos.import_iso(conn, alma_iso, "t-iso-partial.iso", pool=POOL, progress=fail_midway)
    pool = conn.virconn.storagePoolLookupByName(POOL)
    pool.refresh(0)
    assert "t-iso-partial.iso" not in pool.listVolumes()


def test_resolve_iso_accepts_host_path_and_refuses_unknown(
    conn: Connection, alma_iso: Path
) -> None:
    assert isos.resolve_iso(conn, str(alma_iso), pool=POOL) == str(alma_iso)
    with pytest.raises(NotFound, match="neither an imported ISO"):
        isos.resolve_iso(conn, "t-iso-no-such.iso", pool=POOL)
