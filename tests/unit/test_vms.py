"""VM services on libvirt's test driver: inventory, info, create, lifecycle, delete, rollback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import AlreadyExists, InvalidInput, InvalidState, KvmgrError, NotFound
from kvmgr.services import create as create_mod
from kvmgr.services import vms
from kvmgr.services.create import DiskRequest, NicRequest, VMSpec, create_vm
from kvmgr.units import GIB, MIB
from kvmgr.xml.domain import Domain

SAMPLES = Path(__file__).parent.parent / "data" / "domains"


@pytest.fixture
def conn() -> Iterator[Connection]:
    # Each test:///default connection is a private, fresh simulated host.
    connection = open_connection("test:///default")
    yield connection
    connection.close()


def small(vm_name: str, **overrides: Any) -> VMSpec:
    spec = VMSpec(name=vm_name, memory=256 * MIB, vcpus=1, disks=[DiskRequest(size=1 * GIB)])
    for key, value in overrides.items():
        setattr(spec, key, value)
    return spec


def domain_names(conn: Connection) -> set[str]:
    return {dom.name() for dom in conn.virconn.listAllDomains(0)}


def volume_names(conn: Connection) -> set[str]:
    names: set[str] = set()
    for pool in conn.virconn.listAllStoragePools(0):
        if pool.isActive():
            names.update(pool.listVolumes())
    return names


# ------------------------------------------------------------------------------ inventory
def test_list_shows_every_vm_with_state(conn: Connection) -> None:
    create_vm(conn, small("web01"))
    create_vm(conn, small("db01", start=False))
    rows = {row.name: row for row in vms.list_vms(conn)}
    assert rows["web01"].state == "running"
    assert rows["db01"].state == "shut off"
    assert rows["test"].state == "running"  # the test driver's own VM is listed too


class CountingConn:
    """Counts calls on a virConnect, to prove the inventory's cost does not grow with VMs."""

    def __init__(self, inner: libvirt.virConnect) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if callable(attr):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls += 1
                return attr(*args, **kwargs)

            return counted
        return attr


def test_list_calls_do_not_grow_with_vms(conn: Connection) -> None:
    counter = CountingConn(conn.virconn)
    probe = Connection(uri=conn.uri, virconn=counter)  # type: ignore[arg-type]
    vms.list_vms(probe, with_ips=False)
    few = counter.calls
    for index in range(20):
        create_vm(conn, small(f"many{index}", start=False))
    counter.calls = 0
    vms.list_vms(probe, with_ips=False)
    assert counter.calls == few <= 3


def test_info_of_a_vm_kvmgr_did_not_make(tmp_path: Path) -> None:
    node = etree.Element("node")
    for path in sorted(SAMPLES.glob("*.xml")):
        domain = etree.fromstring(path.read_bytes())
        domain.set("type", "test")
        domain.attrib.pop("id", None)
        node.append(domain)
    driver_file = tmp_path / "node.xml"
    driver_file.write_bytes(etree.tostring(node))
    with open_connection(f"test://{driver_file}") as conn:
        names = {row.name for row in vms.list_vms(conn)}
        assert {"centos7", "win10-uefi", "storage-heavy", "web01"} <= names
        info = vms.vm_info(conn, "storage-heavy")
        assert [disk["target"] for disk in info["disks"]] == ["vda", "vdb", "vdc", "sdb", "fda"]
        assert {nic["type"] for nic in info["nics"]} == {"network", "bridge", "direct", "user"}
        assert info["managed_by_kvmgr"] is False
        assert vms.vm_info(conn, "win10-uefi")["firmware"] == "uefi"
        made = vms.vm_info(conn, "web01")
        assert made["managed_by_kvmgr"] is True
        assert made["os"] == "centos7.0"


def test_info_of_missing_vm(conn: Connection) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        vms.vm_info(conn, "nope")


# ------------------------------------------------------------------------------ create
def test_create_builds_what_was_asked(conn: Connection) -> None:
    result = create_vm(
        conn, small("app1", vcpus=2, max_vcpus=4, max_memory=512 * MIB, graphics="vnc")
    )
    assert result.domain_type == "test"
    spec = Domain.from_xml(conn.virconn.lookupByName("app1").XMLDesc(0))
    assert spec.vcpus == 4 and spec.vcpus_current == 2
    assert spec.memory_bytes == 512 * MIB and spec.current_memory_bytes == 256 * MIB
    assert spec.os.machine == "q35"
    [disk] = [d for d in spec.devices.disks if d.device == "disk"]
    assert disk.target_bus == "virtio" and disk.driver_type == "qcow2"
    [gfx] = list(spec.devices.graphics)
    assert gfx.type == "vnc" and gfx.listen_type == "socket"  # never a TCP port
    assert len(spec.devices.serials) == 1 and len(spec.devices.consoles) == 1
    meta = spec.kvmgr_metadata()
    assert meta is not None and meta.owned_volumes == result.volumes


def test_create_without_start(conn: Connection) -> None:
    create_vm(conn, small("cold", start=False))
    assert vms.state(conn, "cold") == "shut off"


@pytest.mark.parametrize(
    ("overrides", "error", "text"),
    [
        ({"name": "bad name"}, InvalidInput, "not allowed"),
        ({"memory": 10 * MIB}, InvalidInput, "too small"),
        ({"memory": 10_000 * GIB}, InvalidInput, "more than this host has"),
        ({"vcpus": 0}, InvalidInput, "at least 1"),
        ({"vcpus": 4, "max_vcpus": 2}, InvalidInput, "max-vcpus"),
        ({"nics": [NicRequest(source="nonet")]}, NotFound, "network 'nonet' does not exist"),
        ({"iso": "/nonexistent/x.iso"}, NotFound, "neither an imported ISO nor an existing file"),
        ({"wait": "soon"}, InvalidInput, "--wait"),
        ({"disks": [DiskRequest(path="/nonexistent/disk.img")]}, NotFound, "does not exist"),
    ],
)
def test_bad_requests_are_refused_and_leave_nothing(
    conn: Connection, overrides: dict[str, Any], error: type, text: str
) -> None:
    before = (domain_names(conn), volume_names(conn))
    with pytest.raises(error, match=text):
        create_vm(conn, small("refused", **overrides))
    assert (domain_names(conn), volume_names(conn)) == before


def test_duplicate_name_is_refused(conn: Connection) -> None:
    create_vm(conn, small("twin"))
    with pytest.raises(AlreadyExists):
        create_vm(conn, small("twin"))


# ------------------------------------------------------------------------------ rollback
class Boom(Exception):
    pass


def _fail(*_args: Any, **_kwargs: Any) -> Any:
    raise libvirt.libvirtError("injected failure")


@pytest.mark.parametrize("step", ["second-volume", "define", "start", "wait"])
def test_each_failing_step_leaves_nothing(
    conn: Connection, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    spec = small("doomed", disks=[DiskRequest(size=GIB), DiskRequest(size=GIB)])
    before = (domain_names(conn), volume_names(conn))
    if step == "second-volume":
        real = create_mod.create_volume
        calls = iter(range(10))

        def second_fails(*args: Any, **kwargs: Any) -> Any:
            if next(calls) == 1:
                raise KvmgrError("injected: pool full")
            return real(*args, **kwargs)

        monkeypatch.setattr(create_mod, "create_volume", second_fails)
    elif step == "define":
        monkeypatch.setattr(conn, "virconn", _Failing(conn.virconn, "defineXML"))
    elif step == "start":
        monkeypatch.setattr(libvirt.virDomain, "create", _fail)
    else:
        spec.wait = "ready"  # the test driver cannot start paused (console from line one): fails
        spec.wait_timeout = 0.5
    with pytest.raises((KvmgrError, libvirt.libvirtError)):
        create_vm(conn, spec)
    monkeypatch.undo()
    assert (domain_names(conn), volume_names(conn)) == before


class _Failing:
    def __init__(self, inner: libvirt.virConnect, method: str) -> None:
        self._inner = inner
        self._method = method

    def __getattr__(self, name: str) -> Any:
        if name == self._method:
            return _fail
        return getattr(self._inner, name)


# ------------------------------------------------------------------------------ lifecycle
def test_lifecycle(conn: Connection) -> None:
    create_vm(conn, small("life"))
    vms.pause(conn, "life")
    assert vms.state(conn, "life") == "paused"
    with pytest.raises(InvalidState, match="paused"):
        vms.start(conn, "life")
    vms.resume(conn, "life")
    assert vms.shutdown(conn, "life", timeout=5) == "shut off"
    with pytest.raises(InvalidState, match="not running"):
        vms.force_off(conn, "life")
    vms.start(conn, "life")
    with pytest.raises(InvalidState, match="already running"):
        vms.start(conn, "life")
    vms.reboot(conn, "life")
    vms.force_off(conn, "life")
    vms.set_autostart(conn, "life", True)
    assert next(row for row in vms.list_vms(conn) if row.name == "life").autostart


def test_delete_refuses_running_vm_without_force(conn: Connection) -> None:
    create_vm(conn, small("busy"))
    with pytest.raises(InvalidState, match="running"):
        vms.delete(conn, "busy")
    assert "busy" in domain_names(conn)


def test_delete_removes_only_its_own_volumes(conn: Connection) -> None:
    create_vm(conn, small("shared-src", start=False))
    src_path = vms.vm_info(conn, "shared-src")["disks"][0]["source"]
    # A second VM that attaches the first VM's disk and a disk nobody created through kvmgr.
    create_vm(conn, small("user", start=False, disks=[DiskRequest(path=src_path)]))
    with pytest.raises(InvalidState, match="user"):
        vms.delete(conn, "shared-src")
    removed = vms.delete(conn, "user")
    assert removed == []  # the attached disk was not its own
    assert Path(src_path).name in volume_names(conn)
    assert vms.delete(conn, "shared-src") == [src_path]
    assert Path(src_path).name not in volume_names(conn)


def test_keep_disks(conn: Connection) -> None:
    result = create_vm(conn, small("keeper", start=False))
    assert vms.delete(conn, "keeper", keep_disks=True) == []
    assert Path(result.volumes[0]).name in volume_names(conn)


# ------------------------------------------------------------------------------ option parsing
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20G", DiskRequest(size=20 * GIB)),
        ("20", DiskRequest(size=20 * GIB)),
        ("pool=fast,size=5G,format=raw", DiskRequest(size=5 * GIB, pool="fast", format="raw")),
        ("path=/srv/disk.img", DiskRequest(path="/srv/disk.img")),
        ("none", None),
    ],
)
def test_disk_option(text: str, expected: DiskRequest | None) -> None:
    assert create_mod.parse_disk_option(text) == expected


@pytest.mark.parametrize(
    "text", ["pool=x", "size=1G,colour=red", "format=vmdk,size=1G", "path=/a,size=1G", "0G"]
)
def test_bad_disk_option(text: str) -> None:
    with pytest.raises(InvalidInput):
        parsed = create_mod.parse_disk_option(text)
        if parsed is not None and parsed.size is None and parsed.path is None:
            raise InvalidInput("no size and no path")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("default", NicRequest()),
        ("network=lan", NicRequest(source="lan")),
        ("bridge=br0", NicRequest(kind="bridge", source="br0")),
        (
            "bridge=br0,model=e1000e,mac=52:54:00:00:00:01",
            NicRequest("bridge", "br0", "e1000e", "52:54:00:00:00:01"),
        ),
        ("none", None),
    ],
)
def test_network_option(text: str, expected: NicRequest | None) -> None:
    assert create_mod.parse_network_option(text) == expected


@pytest.mark.parametrize("text", ["bridge=br0,mac=zz", "network=a/b", "bridge=br0,speed=10"])
def test_bad_network_option(text: str) -> None:
    with pytest.raises(InvalidInput):
        create_mod.parse_network_option(text)


# ------------------------------------------------------------------------------ adopted names
def test_a_vm_named_by_hand_stays_manageable(conn: Connection) -> None:
    """virsh accepts names kvmgr would never give; such a VM must still be managed."""
    from kvmgr.services import resources

    odd = "web server #1 (Café)"
    domain = Domain.from_xml((SAMPLES / "virt-install-centos7.xml").read_text())
    domain.type, domain.name, domain.uuid = "test", odd, None
    domain.element.attrib.pop("id", None)
    conn.virconn.defineXML(domain.to_xml())
    assert odd in {row.name for row in vms.list_vms(conn)}
    assert vms.vm_info(conn, odd)["name"] == odd
    vms.start(conn, odd)
    resources.set_resources(conn, odd, memory=1024 * MIB)
    vms.force_off(conn, odd)
    vms.delete(conn, odd)
    assert odd not in domain_names(conn)


@pytest.mark.parametrize("name", ["", "a/b", "tab\there", "x" * 256])
def test_names_no_libvirt_object_can_have_are_refused(conn: Connection, name: str) -> None:
    with pytest.raises(InvalidInput):
        vms.vm_info(conn, name)
