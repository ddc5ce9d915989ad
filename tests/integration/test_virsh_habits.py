"""What virsh users type, on the real daemon with a real guest (issue 16 item 8):
``-c`` after the subcommand, ``vm destroy`` (= ``vm off``), ``vm undefine`` (a hint naming the
command that keeps the disks), ``vm cdrom eject|insert`` live and in the definition, ``vm
rename``, and ``vm delete`` of a VM kvmgr did not make saying which disks it kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from typer.testing import CliRunner

from kvmgr.cli.common import state
from kvmgr.cli.main import app, take_host_option
from kvmgr.connect import Connection
from kvmgr.xml.domain import Domain
from tests.integration.conftest import Cleanup
from tests.integration.guest import demo_domain

PREFIX = "t-habits-"
URI = "qemu:///system"


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KVMGR_STATE_DIR", str(tmp_path))
    yield
    state.close()


def kvmgr(*argv: str) -> tuple[int, str]:
    host, args = take_host_option(list(argv))  # what run() does with the real argv
    state.host = host
    result = CliRunner().invoke(app, args)
    state.close()
    state.uri = None
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def _cdrom_source(dom: libvirt.virDomain, flags: int = 0) -> str | None:
    spec = Domain.from_xml(dom.XMLDesc(flags))
    (drive,) = [disk for disk in spec.devices.disks if disk.device == "cdrom"]
    return drive.source_path


@pytest.fixture
def guest(conn: Connection, demo_iso: Path, cleanup: Cleanup) -> libvirt.virDomain:
    cleanup.prefix(PREFIX)
    spec = demo_domain(conn, f"{PREFIX}vm", str(demo_iso))
    return conn.virconn.defineXML(spec.to_xml())


def test_connect_after_the_subcommand(guest: libvirt.virDomain) -> None:
    code, out = kvmgr("vm", "list", "-c", URI, "-o", "json")
    assert code == 0 and guest.name() in out
    code, out = kvmgr("vm", "state", guest.name(), f"--connect={URI}")
    assert code == 0 and "shut off" in out


def test_cdrom_eject_and_insert_live_and_in_the_definition(
    guest: libvirt.virDomain, demo_iso: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    copy = tmp_path_factory.mktemp("iso-source") / "demo.iso"  # not in kvmgr's state dir
    copy.write_bytes(demo_iso.read_bytes())
    code, out = kvmgr("-c", URI, "iso", "import", str(copy), "--name", f"{PREFIX}demo.iso")
    assert code == 0, out
    guest.create()
    name = guest.name()
    code, out = kvmgr("-c", URI, "vm", "cdrom", "eject", name)
    assert code == 0, out
    assert _cdrom_source(guest) is None
    assert _cdrom_source(guest, libvirt.VIR_DOMAIN_XML_INACTIVE) is None
    code, out = kvmgr("-c", URI, "vm", "cdrom", "insert", name, f"{PREFIX}demo.iso")
    assert code == 0, out
    inserted = _cdrom_source(guest)
    assert inserted is not None and inserted.endswith(f"{PREFIX}demo.iso")
    assert _cdrom_source(guest, libvirt.VIR_DOMAIN_XML_INACTIVE) == inserted
    code, out = kvmgr("-c", URI, "vm", "cdrom", "insert", name, "/etc/shadow")
    assert code == 1 and "/etc/shadow" in out  # a system file is never a medium
    assert _cdrom_source(guest) == inserted


def test_destroy_is_off_and_undefine_names_the_command(guest: libvirt.virDomain) -> None:
    guest.create()
    code, out = kvmgr("-c", URI, "vm", "destroy", guest.name())
    assert code == 0 and not guest.isActive()
    code, out = kvmgr("-c", URI, "vm", "undefine", guest.name())
    assert code == 1 and f"vm delete {guest.name()} --keep-disks" in out.replace("\n", " ")
    assert guest.isPersistent()  # nothing was removed


def test_rename_refuses_a_running_vm_then_renames(
    conn: Connection, guest: libvirt.virDomain
) -> None:
    old, new = guest.name(), f"{PREFIX}renamed"
    uuid = guest.UUIDString()
    guest.create()
    code, out = kvmgr("-c", URI, "vm", "rename", old, new)
    assert code == 1 and "shut" in out
    guest.destroy()
    code, out = kvmgr("-c", URI, "vm", "rename", old, new)
    assert code == 0, out
    assert conn.virconn.lookupByName(new).UUIDString() == uuid


def test_delete_of_a_vm_kvmgr_did_not_make_names_the_disks_it_kept(
    conn: Connection, demo_iso: Path, cleanup: Cleanup
) -> None:
    cleanup.prefix(PREFIX)
    pool = conn.virconn.storagePoolLookupByName("default")
    vol = pool.createXML(
        f"<volume><name>{PREFIX}disk.qcow2</name><capacity unit='MiB'>8</capacity>"
        "<target><format type='qcow2'/></target></volume>"
    )
    spec = demo_domain(conn, f"{PREFIX}byhand", str(demo_iso), disk_path=vol.path())
    conn.virconn.defineXML(spec.to_xml())
    code, out = kvmgr("-c", URI, "vm", "delete", f"{PREFIX}byhand")
    assert code == 0, out
    assert f"kept {vol.path()}" in out.replace("\n", " ")
    assert "vol delete" in out
    assert pool.storageVolLookupByName(f"{PREFIX}disk.qcow2")  # the disk is still there
