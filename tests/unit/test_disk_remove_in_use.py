"""``vm disk remove --delete-volume`` refuses a volume another VM or an overlay still needs.

On libvirt's test:///default driver, whose state outlives a connection: every name here is
unique and everything made is removed again.  The test driver cannot detach devices, so where a
removal must go through, the VM's detach is replaced by redefining it without the disk (what
libvirt does to a shut-off VM's definition); where it is refused, the real driver is kept, so a
detach attempted before the refusal would surface as Unsupported instead.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import InvalidState
from kvmgr.services import resources, vms
from kvmgr.services.storage import find_volume_by_path
from kvmgr.xml.domain import Domain

POOL = "default-pool"

VOLUME_XML = """<volume>
  <name>{name}</name>
  <capacity unit='bytes'>1048576</capacity>
  <target><format type='qcow2'/></target>{backing}
</volume>"""

BACKING_XML = """
  <backingStore><path>{path}</path><format type='qcow2'/></backingStore>"""

VM_XML = """<domain type='test'>
  <name>{name}</name>
  <metadata>
    <kvmgr:vm xmlns:kvmgr="https://kvmgr.dev/xmlns/kvmgr/1.0">
      <kvmgr:volumes>{owned}</kvmgr:volumes>
    </kvmgr:vm>
  </metadata>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <source file='{path}'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>"""


class _Made:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.tag = uuid.uuid4().hex[:8]
        self.domains: list[str] = []
        self.volumes: list[str] = []

    def volume(self, stem: str, backing: str | None = None) -> str:
        pool = self.conn.virconn.storagePoolLookupByName(POOL)
        extra = BACKING_XML.format(path=backing) if backing else ""
        vol = pool.createXML(VOLUME_XML.format(name=f"t-drm-{self.tag}-{stem}", backing=extra), 0)
        self.volumes.append(vol.path())
        return str(vol.path())

    def vm(self, stem: str, path: str, *, owned: bool) -> str:
        name = f"t-drm-{self.tag}-{stem}"
        record = f"<kvmgr:volume>{path}</kvmgr:volume>" if owned else ""
        self.conn.virconn.defineXML(VM_XML.format(name=name, path=path, owned=record))
        self.domains.append(name)
        return name

    def clean(self) -> None:
        for name in self.domains:
            with contextlib.suppress(libvirt.libvirtError):
                self.conn.virconn.lookupByName(name).undefine()
        for path in reversed(self.volumes):
            vol = find_volume_by_path(self.conn, path)
            if vol is not None:
                vol.delete(0)


@pytest.fixture
def made() -> Iterator[_Made]:
    connection = open_connection("test:///default")
    things = _Made(connection)
    try:
        yield things
    finally:
        things.clean()
        connection.close()


def _disks(conn: Connection, name: str) -> list[str | None]:
    dom = conn.virconn.lookupByName(name)
    spec = Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    return [disk.target_dev for disk in spec.devices.disks]


class _Detaching:
    """A shut-off VM whose detach redefines it without the device (the test driver has none)."""

    def __init__(self, conn: Connection, dom: libvirt.virDomain) -> None:
        self._conn, self._dom = conn, dom

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._dom, attr)

    def detachDeviceFlags(self, xml: str, flags: int) -> int:
        assert flags == libvirt.VIR_DOMAIN_AFFECT_CONFIG
        gone = Domain.from_xml(f"<domain><devices>{xml}</devices></domain>").devices.disks[0]
        spec = Domain.from_xml(self._dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        for disk in spec.devices.disks:
            if disk.target_dev == gone.target_dev:
                disk.element.getparent().remove(disk.element)
        self._dom = self._conn.virconn.defineXML(spec.to_xml())
        return 0


def test_a_disk_another_vm_uses_is_neither_detached_nor_deleted(made: _Made) -> None:
    path = made.volume("shared.qcow2")
    owner = made.vm("owner", path, owned=True)
    other = made.vm("other", path, owned=False)
    with pytest.raises(InvalidState, match=f"also used by VM {other}") as caught:
        resources.remove_disk(made.conn, owner, "vdb", delete_volume=True)
    assert "without --delete-volume" in (caught.value.hint or "")
    assert find_volume_by_path(made.conn, path) is not None
    assert _disks(made.conn, owner) == ["vdb"]


def test_a_disk_an_overlay_volume_is_backed_by_is_not_deleted(made: _Made) -> None:
    base = made.volume("base.qcow2")
    overlay = made.volume("overlay.qcow2", backing=base)
    owner = made.vm("owner", base, owned=True)
    with pytest.raises(InvalidState, match=r"also used by volume default-pool/t-drm-.*-overlay"):
        resources.remove_disk(made.conn, owner, "vdb", delete_volume=True)
    assert find_volume_by_path(made.conn, base) is not None
    assert find_volume_by_path(made.conn, overlay) is not None
    assert _disks(made.conn, owner) == ["vdb"]


def test_a_disk_nothing_else_uses_is_detached_and_deleted(
    made: _Made, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = made.volume("alone.qcow2")
    owner = made.vm("owner", path, owned=True)
    made.vm("bystander", made.volume("other.qcow2"), owned=True)
    real_lookup = vms.lookup
    monkeypatch.setattr(
        resources.vms, "lookup", lambda conn, name: _Detaching(conn, real_lookup(conn, name))
    )
    change = resources.remove_disk(made.conn, owner, "vdb", delete_volume=True)
    assert change.volume_deleted and change.owned
    assert find_volume_by_path(made.conn, path) is None
    assert _disks(made.conn, owner) == []


def test_vm_delete_shares_the_check_but_takes_its_own_overlays_along(made: _Made) -> None:
    base = made.volume("vbase.qcow2")
    overlay = made.volume("voverlay.qcow2", backing=base)
    owner = made.vm("vowner", base, owned=True)
    dom = made.conn.virconn.lookupByName(owner)
    resources._set_owned_volumes(dom, [base, overlay])
    assert vms.others_needing(made.conn, owner, [base, overlay]) == []
    assert vms.others_needing(made.conn, owner, [base]) == [
        f"volume {POOL}/t-drm-{made.tag}-voverlay.qcow2"
    ]
    assert sorted(vms.delete(made.conn, owner)) == sorted([base, overlay])
