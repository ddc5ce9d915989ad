"""Showing, importing and replacing definitions on libvirt's test driver (which validates against
the same schema as the real daemon), and a hand-written VM surviving kvmgr changes intact."""

from __future__ import annotations

import difflib
from collections.abc import Iterator

import libvirt
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import AlreadyExists, InvalidInput, NotFound
from kvmgr.services import definitions, resources
from kvmgr.units import MIB

# Hand-written, with much kvmgr's model does not map: foreign metadata, timers, CPU features,
# NIC bandwidth, a watchdog, a channel, an RNG, boot menu, PM...
RICH_XML = """<domain type='test'>
  <name>t-cfg-rich</name>
  <uuid>0e2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d</uuid>
  <title>Hand made</title>
  <description>Written by hand &amp; kept by kvmgr</description>
  <metadata>
    <app:info xmlns:app="https://example.org/app"><app:owner>ops</app:owner></app:info>
  </metadata>
  <memory unit='MiB'>1024</memory>
  <currentMemory unit='MiB'>512</currentMemory>
  <vcpu placement='static' current='1'>4</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <boot dev='hd'/>
    <boot dev='network'/>
    <bootmenu enable='yes' timeout='3000'/>
  </os>
  <features><acpi/><apic/><pae/></features>
  <cpu mode='custom' match='exact'>
    <model fallback='allow'>qemu64</model>
    <topology sockets='1' dies='1' cores='4' threads='1'/>
    <feature policy='require' name='sse4.2'/>
  </cpu>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
    <timer name='hpet' present='no'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>coredump-restart</on_crash>
  <pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='native' discard='unmap'/>
      <source file='/var/lib/libvirt/images/t-cfg-rich.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <serial>RICH-0001</serial>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
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
    <rng model='virtio'>
      <rate bytes='1024' period='1000'/><backend model='random'>/dev/urandom</backend>
    </rng>
  </devices>
</domain>
"""


@pytest.fixture
def conn() -> Iterator[Connection]:
    connection = open_connection("test:///default")
    yield connection
    for dom in connection.virconn.listAllDomains(0):
        if dom.name().startswith("t-cfg-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    connection.close()


def _inactive_xml(conn: Connection, name: str) -> str:
    dom = conn.virconn.lookupByName(name)
    return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def _changed_lines(before: str, after: str) -> list[str]:
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]


# ----------------------------------------------------------------------------- checks
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<domain type='test'><name>x</name>", "not well-formed"),
        ("<network><name>x</name></network>", "not a <domain>"),
        ("<domain type='test'><memory>1</memory></domain>", "no <name>"),
        ("<domain type='test'><name>../etc/passwd</name></domain>", "not allowed"),
        ("<domain><name>ok</name></domain>", "no type"),
        (
            "<!DOCTYPE d [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
            "<domain type='test'><name>&e;</name></domain>",
            "no <name>",
        ),
    ],
)
def test_documents_kvmgr_can_judge_itself_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        definitions.check_document(text)


def test_define_refuses_a_schema_violation_with_the_reason_and_defines_nothing(
    conn: Connection,
) -> None:
    bad = RICH_XML.replace("<on_poweroff>", "<bogus-element/><on_poweroff>")
    with pytest.raises(InvalidInput, match="bogus-element"):
        definitions.define_vm(conn, bad)
    assert "t-cfg-rich" not in [dom.name() for dom in conn.virconn.listAllDomains(0)]


def test_define_imports_a_new_vm_but_not_over_an_existing_one(conn: Connection) -> None:
    result = definitions.define_vm(conn, RICH_XML)
    assert (result.name, result.uuid) == ("t-cfg-rich", "0e2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d")
    with pytest.raises(AlreadyExists, match="vm edit t-cfg-rich"):
        definitions.define_vm(conn, RICH_XML)


def test_vm_xml_shows_the_live_or_the_inactive_definition(conn: Connection) -> None:
    definitions.define_vm(conn, RICH_XML)
    dom = conn.virconn.lookupByName("t-cfg-rich")
    dom.create()
    resources.set_resources(conn, "t-cfg-rich", vcpus=2, live=True)
    assert "current='2'" in definitions.vm_xml(conn, "t-cfg-rich")
    assert "current='1'" in definitions.vm_xml(conn, "t-cfg-rich", inactive=True)
    with pytest.raises(NotFound):
        definitions.vm_xml(conn, "t-cfg-missing")


# ----------------------------------------------------------------------------- edit
def test_edit_applies_a_valid_change(conn: Connection) -> None:
    definitions.define_vm(conn, RICH_XML)
    text = definitions.editable_xml(conn, "t-cfg-rich")
    edited = text.replace("<title>Hand made</title>", "<title>Edited</title>")
    result = definitions.replace_definition(conn, "t-cfg-rich", edited)
    assert result.changed
    assert _changed_lines(text, _inactive_xml(conn, "t-cfg-rich")) == [
        "-  <title>Hand made</title>",
        "+  <title>Edited</title>",
    ]
    assert not definitions.replace_definition(conn, "t-cfg-rich", edited).changed


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("<name>t-cfg-rich</name>", "<name>t-cfg-renamed</name>", "renaming"),
        ("0e2b3c4d-5e6f", "1e2b3c4d-5e6f", "UUID .* cannot be changed"),
        ("<on_poweroff>", "<bogus-element/><on_poweroff>", "(?s)not valid: .*bogus-element"),
        ("<vcpu placement='static' current='1'>4", "<vcpu placement='static'>lots", "not valid"),
    ],
)
def test_an_invalid_edit_is_refused_and_the_old_definition_kept(
    conn: Connection, old: str, new: str, message: str
) -> None:
    definitions.define_vm(conn, RICH_XML)
    before = _inactive_xml(conn, "t-cfg-rich")
    edited = definitions.editable_xml(conn, "t-cfg-rich").replace(old, new)
    with pytest.raises(InvalidInput, match=message):
        definitions.replace_definition(conn, "t-cfg-rich", edited)
    assert _inactive_xml(conn, "t-cfg-rich") == before
    assert [d.name() for d in conn.virconn.listAllDomains(0) if d.name() == "t-cfg-renamed"] == []


def test_an_edit_without_uuid_keeps_the_vms_uuid(conn: Connection) -> None:
    definitions.define_vm(conn, RICH_XML)
    edited = RICH_XML.replace("<uuid>0e2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d</uuid>", "").replace(
        "Hand made", "No UUID"
    )
    result = definitions.replace_definition(conn, "t-cfg-rich", edited)
    assert result.uuid == "0e2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d"
    assert "<title>No UUID</title>" in _inactive_xml(conn, "t-cfg-rich")


# ----------------------------------------------------------------------------- nothing lost
def test_a_hand_written_vm_loses_nothing_when_kvmgr_changes_it(conn: Connection) -> None:
    definitions.define_vm(conn, RICH_XML)
    before = _inactive_xml(conn, "t-cfg-rich")
    resources.set_resources(conn, "t-cfg-rich", vcpus=3, memory=768 * MIB)
    after = _inactive_xml(conn, "t-cfg-rich")
    assert _changed_lines(before, after) == [
        "-  <currentMemory unit='KiB'>524288</currentMemory>",
        "-  <vcpu placement='static' current='1'>4</vcpu>",
        "+  <currentMemory unit='KiB'>786432</currentMemory>",
        "+  <vcpu placement='static' current='3'>4</vcpu>",
    ]
    for kept in ("app:owner", "coredump-restart", "i6300esb", "RICH-0001", "sse4.2", "hpet"):
        assert kept in after
