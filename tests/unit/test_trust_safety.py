"""Issue 11: 'vm list' tells persistence truly, and a template never autostarts (test driver)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import InvalidInput, InvalidState
from kvmgr.services import clones, vms

DOMAIN_XML = """<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type></os>
</domain>"""
VM = "t-trust"  # defined (persistent) and shut off by the fixture
TRANSIENT = "t-trust-transient"


@pytest.fixture
def conn() -> Iterator[Connection]:
    connection = open_connection("test:///default")
    connection.virconn.defineXML(DOMAIN_XML.format(name=VM))
    yield connection
    # test:///default state can outlive a connection: leave no VM of ours behind
    for dom in connection.virconn.listAllDomains(0):
        if dom.name() in (VM, TRANSIENT):
            persistent = dom.isPersistent()
            if dom.isActive():
                dom.destroy()  # a transient VM is gone with it
            if persistent:
                dom.setAutostart(0)
                dom.undefine()
    connection.close()


# ------------------------------------------------------------------------------ persistence
def test_list_reports_a_transient_vm_as_not_persistent(conn: Connection) -> None:
    conn.virconn.createXML(DOMAIN_XML.format(name=TRANSIENT), 0)
    rows = {row.name: row for row in vms.list_vms(conn)}
    assert rows[TRANSIENT].state == "running"
    assert rows[TRANSIENT].persistent is False
    assert rows[VM].persistent is True
    assert rows["test"].persistent is True  # the test driver's own, defined VM
    assert vms.vm_info(conn, TRANSIENT)["persistent"] is False  # list and info agree


def test_list_reports_an_undefined_running_vm_as_not_persistent(conn: Connection) -> None:
    dom = conn.virconn.lookupByName(VM)
    dom.create()
    dom.undefine()  # still running, but gone when it stops
    row = next(row for row in vms.list_vms(conn) if row.name == VM)
    assert row.persistent is False


# ------------------------------------------------------------------------------ autostart
def test_autostart_on_a_template_is_refused_with_a_hint(conn: Connection) -> None:
    clones.mark_template(conn, VM)
    with pytest.raises(InvalidInput, match="template") as err:
        vms.set_autostart(conn, VM, True)
    assert err.value.hint and "clone" in err.value.hint
    assert not conn.virconn.lookupByName(VM).autostart()
    vms.set_autostart(conn, VM, False)  # switching it off stays allowed


def test_template_of_an_autostarting_vm_is_refused_with_a_hint(conn: Connection) -> None:
    vms.set_autostart(conn, VM, True)
    with pytest.raises(InvalidState, match="autostart") as err:
        clones.mark_template(conn, VM)
    assert err.value.hint and f"kvmgr vm autostart {VM} off" in err.value.hint
    assert not vms.vm_info(conn, VM)["template"]  # nothing changed
    assert conn.virconn.lookupByName(VM).autostart()


def test_template_after_autostart_off_succeeds(conn: Connection) -> None:
    vms.set_autostart(conn, VM, True)
    vms.set_autostart(conn, VM, False)
    assert clones.mark_template(conn, VM)["template"] is True
    assert vms.vm_info(conn, VM)["template"]
    assert not conn.virconn.lookupByName(VM).autostart()


def test_autostart_on_an_ordinary_vm_still_works(conn: Connection) -> None:
    vms.set_autostart(conn, VM, True)
    assert next(row for row in vms.list_vms(conn) if row.name == VM).autostart
