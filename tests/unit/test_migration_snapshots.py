"""Planning a move of a VM's snapshots (services.migration_snapshots) on two test:/// hosts.

Each host is its own test-driver file (a private driver state per file), with a dir pool at
the same directory.  The VM's disk is the top of a chain base <- one <- top with two external
snapshot records on it: the preflight lists the records parents first, the layers bottom
first with what is the VM's own, and refuses internal snapshots with the commands that remove
them; the journal's settle actions put records back where the VM is and remove what a failed
move made.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.services import migration_snapshots as moves
from kvmgr.services import snapshots
from kvmgr.services.migration_checks import preflight
from kvmgr.services.steps import LocalSteps
from tests.testdriver import private_hosts

IMAGES = "/images"
VM = "chain"
_POOL = f"""<pool type='dir'><name>default</name>
<capacity unit='GiB'>100</capacity><available unit='GiB'>90</available>
<target><path>{IMAGES}</path></target></pool>"""
_DOMAIN = f"""<domain type='test'><name>{VM}</name>
<uuid>6f1d0c2e-6b7a-4b8e-9d1e-0c1a2b3c4d5e</uuid>
<memory unit='MiB'>128</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='{IMAGES}/{VM}.two.vda.qcow2'/><target dev='vda' bus='virtio'/></disk></devices>
</domain>"""


def _volume(conn: Connection, name: str, backing: str | None) -> None:
    back = (
        f"<backingStore><path>{IMAGES}/{backing}</path><format type='qcow2'/></backingStore>"
        if backing
        else ""
    )
    conn.virconn.storagePoolLookupByName("default").createXML(
        f"<volume><name>{name}</name><capacity unit='MiB'>64</capacity>"
        f"<allocation unit='MiB'>8</allocation><target><format type='qcow2'/></target>"
        f"{back}</volume>",
        0,
    )


def _snapshot(name: str, parent: str | None, frozen: str, overlay: str) -> str:
    return (
        f"<domainsnapshot><name>{name}</name><state>shutoff</state>"
        f"<creationTime>{1000 + len(frozen)}</creationTime>"
        + (f"<parent><name>{parent}</name></parent>" if parent else "")
        + "<memory snapshot='no'/><disks><disk name='vda' snapshot='external' type='file'>"
        f"<driver type='qcow2'/><source file='{IMAGES}/{overlay}'/></disk></disks>"
        + _DOMAIN.replace(f"{VM}.two.vda.qcow2", frozen)
        + "</domainsnapshot>"
    )


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Connection, Connection]]:
    with private_hosts(tmp_path, f"<node>{_POOL}</node>") as (src, dst):
        _chain_with_two_snapshots(src)
        yield src, dst


def _chain_with_two_snapshots(src: Connection) -> None:
    _volume(src, f"{VM}.qcow2", None)
    _volume(src, f"{VM}.one.vda.qcow2", f"{VM}.qcow2")
    _volume(src, f"{VM}.two.vda.qcow2", f"{VM}.one.vda.qcow2")
    dom = src.virconn.defineXML(_DOMAIN)
    redefine = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
    dom.snapshotCreateXML(_snapshot("one", None, f"{VM}.qcow2", f"{VM}.one.vda.qcow2"), redefine)
    dom.snapshotCreateXML(
        _snapshot("two", "one", f"{VM}.one.vda.qcow2", f"{VM}.two.vda.qcow2"),
        redefine | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT,
    )


def test_preflight_plans_the_records_parents_first_and_the_layers_bottom_first(
    hosts: tuple[Connection, Connection],
) -> None:
    src, dst = hosts
    check = preflight(src, dst, VM, offline=True)
    assert check.snapshots == ["one", "two"] and check.current_snapshot == "two"
    assert [layer.volume for layer in check.layers] == [f"{VM}.qcow2", f"{VM}.one.vda.qcow2"]
    assert [layer.backing for layer in check.layers] == [None, f"{IMAGES}/{VM}.qcow2"]
    assert all(layer.owned and not layer.present for layer in check.layers)  # frozen states
    assert not [p for p in check.problems if "snapshot" in p or "linked clone" in p]
    # The data to move counts the layers (8 MiB each) as well as the top.
    assert check.copy_bytes == 3 * 8 * 2**20


def test_a_base_the_destination_has_is_compared_not_copied_and_own_images_must_not_clash(
    hosts: tuple[Connection, Connection],
) -> None:
    src, dst = hosts
    _volume(dst, f"{VM}.qcow2", None)
    check = preflight(src, dst, VM, offline=True)
    base = check.layers[0]
    assert base.present and base.owned
    assert any("an image of this VM's snapshots" in p for p in check.problems)


def test_a_pool_at_another_directory_is_refused(hosts: tuple[Connection, Connection]) -> None:
    src, dst = hosts
    pool = dst.virconn.storagePoolLookupByName("default")
    pool.destroy()
    pool.undefine()
    dst.virconn.storagePoolCreateXML(_POOL.replace(IMAGES, "/elsewhere"), 0)
    problems = " | ".join(preflight(src, dst, VM, offline=True).problems)
    assert "images name their backing files by absolute path" in problems


def test_internal_snapshots_are_refused_with_the_commands_that_remove_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "host.xml"
    path.write_text(f"<node>{_POOL}</node>")
    conn = open_connection(f"test://{path}")
    other = tmp_path / "other.xml"
    other.write_text(f"<node>{_POOL}</node>")
    dst = open_connection(f"test://{other}")
    dom = conn.virconn.defineXML(_DOMAIN)
    dom.snapshotCreateXML("<domainsnapshot><name>inside</name></domainsnapshot>", 0)
    assert snapshots.kind_of(snapshots._model(dom.snapshotLookupByName("inside", 0))) == "internal"
    check = preflight(conn, dst, VM, offline=True)
    (problem,) = [p for p in check.problems if "internal snapshot" in p]
    assert f"kvmgr snap delete {VM} inside" in problem and "--disk-only" in problem
    assert check.snapshots == []


def test_hand_over_journals_the_records_and_settling_puts_them_back_or_cleans_up(
    hosts: tuple[Connection, Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = hosts
    # The test driver keeps records only and takes no delete flags: its plain delete is the
    # metadata-only delete a real host gets.
    monkeypatch.setattr(libvirt, "VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY", 0)
    check = preflight(src, dst, VM, offline=True)
    source_steps, dest_steps = LocalSteps(), LocalSteps()
    made = [("default", f"{VM}.qcow2")]
    _volume(dst, f"{VM}.qcow2", None)
    dom = src.virconn.lookupByName(VM)
    moves.hand_over(dom, check, source_steps, dest_steps, made)
    assert dom.snapshotNum(0) == 0  # libvirt moves no VM with snapshot records
    assert [r.action for r in source_steps.finish] == ["migrate.settle_snapshots_out"]
    # The move failed: the VM is still defined on the source, which gets its records back,
    # and the destination loses what was made for it.
    assert source_steps.recover(src) == []
    assert [(s.name, s.parent, s.current) for s in snapshots.list_snapshots(src, VM)] == [
        ("one", None, False),
        ("two", "one", True),
    ]
    assert dest_steps.recover(dst) == []
    assert f"{VM}.qcow2" not in dst.virconn.storagePoolLookupByName("default").listVolumes()
    # The move succeeded: the destination's settle redefines the records on the arrived VM.
    arrived = dst.virconn.defineXML(_DOMAIN)
    moves.settle_in(dst, {"uuid": check.uuid, "snapshots": check.snapshot_xml, "current": "two"})
    assert [(s.name, s.parent, s.current) for s in snapshots.list_snapshots(dst, VM)] == [
        ("one", None, False),
        ("two", "one", True),
    ]
    assert moves.redefine(arrived, check.snapshot_xml, "two") == []  # idempotent
