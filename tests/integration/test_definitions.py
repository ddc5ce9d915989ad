"""VMs kvmgr did not make keep everything through kvmgr changes, on the real daemon.

Two definitions: one printed by a real ``virt-install --print-xml --dry-run`` and one written by
hand with much kvmgr's model does not map.  Each is defined with libvirt-python, changed by kvmgr
(vCPUs, memory, a new disk), and the definition before and after is compared: only the intended
change may differ.  The VMs are never started.  ``vm define``/``vm edit`` are driven through the
CLI with $EDITOR set to a script.
"""

from __future__ import annotations

import contextlib
import difflib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from lxml import etree
from typer.testing import CliRunner

from kvmgr.cli.common import state
from kvmgr.cli.main import app
from kvmgr.connect import Connection, open_connection
from kvmgr.errors import KvmgrError
from kvmgr.services import resources, vms
from kvmgr.services.storage import find_volume_by_path
from kvmgr.units import MIB
from kvmgr.xml.domain import KVMGR_NS

pytestmark = pytest.mark.integration

URI = "qemu:///system"
VIRT_INSTALL_VM, HAND_VM, CLI_VM = "t-cfg-vi", "t-cfg-hand", "t-cfg-cli"

HAND_XML = """<domain type='qemu'>
  <name>{name}</name>
  <title>Hand made</title>
  <description>Written by hand &amp; changed by kvmgr</description>
  <metadata>
    <app:info xmlns:app="https://example.org/app"><app:owner>ops</app:owner></app:info>
  </metadata>
  <memory unit='MiB'>512</memory>
  <currentMemory unit='MiB'>256</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <boot dev='hd'/>
    <bootmenu enable='yes' timeout='3000'/>
  </os>
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='allow'>qemu64</model>
    <topology sockets='1' dies='1' cores='2' threads='1'/>
  </cpu>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
    <timer name='hpet' present='no'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>
  <devices>
    <controller type='pci' model='pcie-root'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <interface type='network'>
      <mac address='52:54:00:c0:f9:01'/>
      <source network='default'/>
      <model type='virtio'/>
      <bandwidth><inbound average='1000' peak='5000' burst='1024'/></bandwidth>
      <link state='up'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <watchdog model='i6300esb' action='reset'/>
    <memballoon model='virtio'><stats period='10'/></memballoon>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
"""


@pytest.fixture(scope="module")
def conn() -> Iterator[Connection]:
    connection = open_connection(URI)
    yield connection
    connection.close()


def _remove(conn: Connection, name: str) -> None:
    with contextlib.suppress(KvmgrError):
        vms.delete(conn, name, force=True)  # also deletes the volumes kvmgr recorded


@pytest.fixture
def cleanup(conn: Connection) -> Iterator[None]:
    names = (VIRT_INSTALL_VM, HAND_VM, CLI_VM, "t-cfg-other")
    for name in names:
        _remove(conn, name)
    yield
    for name in names:
        _remove(conn, name)


def _inactive(conn: Connection, name: str) -> str:
    return str(conn.virconn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def _diff(before: str, after: str) -> str:
    return "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm=""))


def _without(xml: str, *, disk_target: str | None, vcpu_text: str) -> str:
    """``xml`` with kvmgr's intended changes taken back out, as libvirt would print it."""
    root = etree.fromstring(xml)
    if disk_target:
        for disk in root.findall("./devices/disk"):
            target = disk.find("target")
            if target is not None and target.get("dev") == disk_target:
                disk.getparent().remove(disk)  # type: ignore[union-attr]
    for node in root.findall(f"./metadata/{{{KVMGR_NS}}}vm"):
        metadata = node.getparent()
        metadata.remove(node)  # type: ignore[union-attr]
        if metadata is not None and len(metadata) == 0:
            root.remove(metadata)
    vcpu = root.find("vcpu")
    assert vcpu is not None
    vcpu.attrib.clear()
    restored = etree.fromstring(vcpu_text)
    vcpu.attrib.update(restored.attrib)
    vcpu.text = restored.text
    return str(etree.tostring(root, encoding="unicode"))


_PARSER = etree.XMLParser(remove_blank_text=True)


def _canonical(xml: str) -> str:
    """Same document, same text: whitespace between elements does not count, nor the order of
    <controller> elements (libvirt sorts them anew when a device is attached)."""
    root = etree.fromstring(xml, _PARSER)
    devices = root.find("devices")
    assert devices is not None
    controllers = devices.findall("controller")
    for node in controllers:
        devices.remove(node)
    for node in sorted(controllers, key=lambda n: etree.tostring(n, method="c14n")):
        devices.append(node)
    return etree.tostring(root, method="c14n").decode()


def _change_and_compare(conn: Connection, name: str) -> None:
    """Change vCPUs, memory and add a disk through kvmgr; only those may differ afterwards."""
    before = _inactive(conn, name)
    vcpu_before = etree.tostring(etree.fromstring(before).find("vcpu")).decode()
    memory_before = etree.fromstring(before).findtext("currentMemory")
    resources.set_resources(conn, name, max_vcpus=2, vcpus=2, memory=200 * MIB)
    added = resources.add_disk(conn, name, size=16 * MIB)
    after = _inactive(conn, name)
    try:
        parsed = etree.fromstring(after)
        assert parsed.findtext("currentMemory") == str(200 * 1024)
        restored = _without(after, disk_target=added.target, vcpu_text=vcpu_before)
        restored_root = etree.fromstring(restored)
        memory = restored_root.find("currentMemory")
        assert memory is not None
        memory.text = memory_before
        restored = str(etree.tostring(restored_root, encoding="unicode"))
        # Anything else libvirt added for the disk (say, a root port) counts as a change too:
        # both VMs have spare root ports, as virt-install and kvmgr give them.
        assert _canonical(restored) == _canonical(before), _diff(before, after)
    finally:
        removed = resources.remove_disk(conn, name, added.target, delete_volume=True)
    assert removed.volume_deleted and find_volume_by_path(conn, added.path or "") is None


# ----------------------------------------------------------------------------- adopted VMs
@pytest.mark.skipif(shutil.which("virt-install") is None, reason="virt-install is not installed")
def test_a_virt_install_vm_keeps_everything_through_kvmgr_changes(
    conn: Connection, cleanup: None
) -> None:
    printed = subprocess.run(
        [
            "virt-install", "--connect", URI, "--name", VIRT_INSTALL_VM,
            "--memory", "256", "--vcpus", "1", "--osinfo", "linux2022",
            "--import", "--disk", "none", "--network", "network=default",
            "--graphics", "none", "--noautoconsole", "--print-xml", "--dry-run",
        ],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    conn.virconn.defineXML(printed)
    _change_and_compare(conn, VIRT_INSTALL_VM)
    assert VIRT_INSTALL_VM in [row.name for row in vms.list_vms(conn)]


def test_a_hand_written_vm_keeps_everything_through_kvmgr_changes(
    conn: Connection, cleanup: None
) -> None:
    conn.virconn.defineXML(HAND_XML.format(name=HAND_VM))
    _change_and_compare(conn, HAND_VM)
    after = _inactive(conn, HAND_VM)
    for kept in ("app:owner", "i6300esb", "bandwidth", "bootmenu", "hpet", "Hand made"):
        assert kept in after


# ----------------------------------------------------------------------------- CLI
def _editor(tmp_path: Path, sed: str) -> str:
    script = tmp_path / "editor.sh"
    script.write_text(f"#!/bin/sh\nsed -i '{sed}' \"$1\"\n")
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def cli() -> Iterator[CliRunner]:
    yield CliRunner()
    state.close()


def test_define_and_edit_through_the_cli(
    conn: Connection, cleanup: None, cli: CliRunner, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text(HAND_XML.format(name=CLI_VM).replace("<pm>", "<bogus/><pm>"))
    result = cli.invoke(app, ["-c", URI, "vm", "define", str(bad)])
    assert result.exit_code == 1 and "bogus" in result.output
    assert not vms.exists(conn, CLI_VM)

    good = tmp_path / "good.xml"
    good.write_text(HAND_XML.format(name=CLI_VM))
    result = cli.invoke(app, ["-c", URI, "vm", "define", str(good)])
    assert result.exit_code == 0, result.output
    before = _inactive(conn, CLI_VM)

    invalid = _editor(tmp_path, "s#<on_crash>#<bogus/><on_crash>#")
    result = cli.invoke(app, ["-c", URI, "vm", "edit", CLI_VM], env={"EDITOR": invalid})
    assert result.exit_code == 1 and "bogus" in result.output
    assert _inactive(conn, CLI_VM) == before

    rename = _editor(tmp_path, f"s#<name>{CLI_VM}</name>#<name>t-cfg-other</name>#")
    result = cli.invoke(app, ["-c", URI, "vm", "edit", CLI_VM], env={"EDITOR": rename})
    assert result.exit_code == 1 and "renaming" in result.output
    assert not vms.exists(conn, "t-cfg-other")

    retitle = _editor(tmp_path, "s#<title>Hand made</title>#<title>Edited</title>#")
    result = cli.invoke(app, ["-c", URI, "vm", "edit", CLI_VM], env={"EDITOR": retitle})
    assert result.exit_code == 0 and "definition changed" in result.output
    after = _inactive(conn, CLI_VM)
    assert after.count("<title>Edited</title>") == 1
    reverted = after.replace("<title>Edited</title>", "<title>Hand made</title>")
    assert _canonical(reverted) == _canonical(before), _diff(before, after)

    result = cli.invoke(app, ["-c", URI, "vm", "xml", CLI_VM, "--inactive"])
    assert result.exit_code == 0 and "<title>Edited</title>" in result.output
