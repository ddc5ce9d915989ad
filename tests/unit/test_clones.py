"""Clone and template policy on libvirt's test driver (copies themselves are integration tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import AlreadyExists, InvalidState
from kvmgr.services import clones, vms

VM = "test"  # the test driver's running default domain


@pytest.fixture
def conn() -> Iterator[Connection]:
    connection = open_connection("test:///default")
    yield connection
    connection.close()


def test_running_source_is_refused_with_a_way_out(conn: Connection) -> None:
    with pytest.raises(InvalidState, match="running") as err:
        clones.clone_vm(conn, VM, "copy")
    assert "--snapshot" in str(err.value)
    assert not vms.exists(conn, "copy")


def test_existing_target_name_refused(conn: Connection) -> None:
    with pytest.raises(AlreadyExists):
        clones.clone_vm(conn, VM, VM)


def test_linked_clone_needs_a_template(conn: Connection) -> None:
    dom = conn.virconn.lookupByName(VM)
    dom.destroy()
    try:
        with pytest.raises(InvalidState, match="kvmgr vm template test"):
            clones.clone_vm(conn, VM, "copy", linked=True)
    finally:
        dom.create()


def test_template_needs_a_shut_off_vm(conn: Connection) -> None:
    with pytest.raises(InvalidState, match="shut it down"):
        clones.mark_template(conn, VM)
