"""Issue 11, hole 3, in the services the journal touches (test driver): a --wait timeout keeps
a VM that works, and a VM delete whose volume cannot be deleted orphans nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import KvmgrError, OperationFailed
from kvmgr.services import storage, vms
from kvmgr.services.create import DiskRequest, NicRequest, VMSpec, create_vm
from kvmgr.units import GIB, MIB


@pytest.fixture
def conn() -> Iterator[Connection]:
    connection = open_connection("test:///default")
    yield connection
    connection.close()


def _volumes(conn: Connection) -> set[str]:
    found: set[str] = set()
    for pool in conn.virconn.listAllStoragePools(0):
        if pool.isActive():
            pool.refresh(0)
            found |= {pool.storageVolLookupByName(n).path() for n in pool.listVolumes()}
    return found


def test_wait_ip_timeout_keeps_the_vm_and_says_so(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a guest slower than the wait: no address yet (the test driver would make one up)
    from kvmgr.services import addresses

    monkeypatch.setattr(addresses, "discover_ips", lambda *_args, **_kw: [])
    spec = VMSpec(
        "waiter",
        memory=256 * MIB,
        vcpus=1,
        disks=[DiskRequest(size=GIB)],
        nics=[NicRequest()],
        wait="ip",
        wait_timeout=0.5,
    )
    with pytest.raises(KvmgrError, match="was created and is kept running") as err:
        create_vm(conn, spec)
    assert "vm delete waiter" in str(err.value)
    assert vms.state(conn, "waiter") == "running"
    meta = vms.definition(vms.lookup(conn, "waiter")).kvmgr_metadata()
    assert meta is not None and all(path in _volumes(conn) for path in meta.owned_volumes)


def test_delete_with_a_failing_volume_keeps_the_vm_and_the_rest_of_its_record(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = VMSpec(
        "twodisks",
        memory=256 * MIB,
        vcpus=1,
        disks=[DiskRequest(size=GIB), DiskRequest(size=GIB)],
        start=False,
    )
    first, second = create_vm(conn, spec).volumes
    real = storage.delete_volume_by_path

    def stuck(c: Connection, path: str) -> bool:
        if path == first:
            raise OperationFailed(f"deleting volume {path} failed: injected: device busy")
        return real(c, path)

    monkeypatch.setattr(storage, "delete_volume_by_path", stuck)
    with pytest.raises(OperationFailed, match="is kept") as err:
        vms.delete(conn, "twodisks")
    assert "device busy" in str(err.value)
    # Before: undefined first, then stopped at the failing volume: the rest orphaned.  Now the
    # VM stays, its record names exactly the volume still to delete, the other one is gone.
    meta = vms.definition(vms.lookup(conn, "twodisks"), inactive=True).kvmgr_metadata()
    assert meta is not None and meta.owned_volumes == [first]
    assert first in _volumes(conn) and second not in _volumes(conn)
    monkeypatch.undo()
    assert vms.delete(conn, "twodisks") == [first]  # deleting again finishes it
    assert not vms.exists(conn, "twodisks") and first not in _volumes(conn)


def test_delete_every_volume_is_tried(conn: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = VMSpec(
        "threedisks",
        memory=256 * MIB,
        vcpus=1,
        disks=[DiskRequest(size=GIB), DiskRequest(size=GIB), DiskRequest(size=GIB)],
        start=False,
    )
    paths = create_vm(conn, spec).volumes
    tried: list[str] = []
    real = storage.delete_volume_by_path

    def first_fails(c: Connection, path: str) -> bool:
        tried.append(path)
        if path == paths[0]:
            raise OperationFailed("injected")
        return real(c, path)

    monkeypatch.setattr(storage, "delete_volume_by_path", first_fails)
    with pytest.raises(OperationFailed):
        vms.delete(conn, "threedisks")
    assert tried[: len(paths)] == paths  # (then the journal's finish retries the one left)
    assert _volumes(conn) & set(paths) == {paths[0]}


def test_vm_off_escalates_when_sigterm_does_not_end_qemu(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libvirt's graceful destroy only sends SIGTERM and fails when QEMU outlives it; vm off
    then asks for the plain destroy, which follows with SIGKILL."""
    import libvirt

    create_vm(conn, VMSpec("hung", memory=256 * MIB, vcpus=1, disks=[], nics=[]))
    asked: list[int] = []
    real = libvirt.virDomain.destroyFlags

    def sigterm_ignored(dom: libvirt.virDomain, flags: int = 0) -> int:
        asked.append(flags)
        if flags & libvirt.VIR_DOMAIN_DESTROY_GRACEFUL:
            err = libvirt.libvirtError("Failed to terminate process 4242 with SIGTERM")
            err.err = (libvirt.VIR_ERR_OPERATION_FAILED, 0, str(err), 0, "", None, None, 0, 0)
            raise err
        return int(real(dom, flags))

    monkeypatch.setattr(libvirt.virDomain, "destroyFlags", sigterm_ignored)
    vms.force_off(conn, "hung")
    assert asked == [libvirt.VIR_DOMAIN_DESTROY_GRACEFUL, libvirt.VIR_DOMAIN_DESTROY_DEFAULT]
    assert vms.state(conn, "hung") == "shut off"
