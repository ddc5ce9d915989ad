"""The lab (kvmgr.host.lab) as a session fixture, for every test in tests/lab.

``lab`` builds its libvirt hosts (three, and a fourth for evacuation) once per session and
removes them at the end whatever happened; a run killed before that leaves a lab the next run
reclaims (its owner pid is gone) and ``scripts/lab down --all`` removes.  With
``KVMGR_LAB=kvl0`` the tests use a lab made by ``scripts/lab up --hosts 4`` instead and leave it
running (quick iteration by hand).

Tests here are marked ``lab`` and ``integration`` (they need root and real daemons), so
``pytest -m lab`` runs just them and ``-m "not integration"`` leaves them out.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.host import lab as labs
from tests.integration.conftest import (
    demo_iso,  # noqa: F401  (the fixture, shared)
    remove_vm,
)

_LAB_DIR = Path(__file__).parent
LAB_ENV = "KVMGR_LAB"
#: Three hosts, and a fourth so that evacuation has three destinations (issue 14's test).
LAB_HOSTS = 4


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _LAB_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.lab)
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def lab() -> Iterator[labs.Lab]:
    reuse = os.environ.get(LAB_ENV)
    if reuse:
        yield labs.load(reuse)
        return
    built = labs.up(LAB_HOSTS, owner_pid=os.getpid())
    try:
        yield built
    finally:
        labs.down(built.name)


@pytest.fixture(autouse=True)
def _emulated_guests(monkeypatch: pytest.MonkeyPatch) -> None:
    # The lab hosts report KVM (the machine has /dev/kvm), which hangs here: guests use TCG.
    monkeypatch.setenv("KVMGR_DOMAIN_TYPE", "qemu")


@pytest.fixture(scope="session")
def lab_ssh(lab: labs.Lab) -> Iterator[list[Connection]]:
    """One qemu+ssh connection per lab host, in host order."""
    connections = [open_connection(lab.ssh_uri(host)) for host in lab.hosts]
    yield connections
    for conn in connections:
        conn.close()


@pytest.fixture(scope="session")
def lab_tls(lab: labs.Lab) -> Iterator[list[Connection]]:
    """One qemu+tls connection per lab host, in host order."""
    connections = [open_connection(lab.tls_uri(host)) for host in lab.hosts]
    yield connections
    for conn in connections:
        conn.close()


def remove_domain(conn: Connection, name: str) -> None:
    """Destroy and undefine ``name`` on one lab host if it is there (tests' cleanup)."""
    remove_vm(conn, name)  # the integration tests' one way to remove a VM


#: A shell loop for a demo guest: a counter on its console log and in sector 8 of its disk every
#: 0.2 s (synchronous writes), so a move shows whether the guest and its disk went on unbroken.
DISK_COUNTER = (
    "(i=0; while true; do i=$((i+1)); echo $i >> /tmp/counter.log;"
    " echo $i | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null; sleep 0.2; done) & true"
)


def purge_prefix(connections: list[Connection], prefix: str, pool: str = "default") -> None:
    """Remove every domain and volume (of ``pool``) named ``prefix``* on the given lab hosts."""
    for conn in connections:
        for dom in conn.virconn.listAllDomains(0):
            if dom.name().startswith(prefix):
                remove_domain(conn, dom.name())
        storage = conn.virconn.storagePoolLookupByName(pool)
        storage.refresh(0)
        # Overlays before the images under them (more dots: deeper in a snapshot chain).
        for vol in sorted(storage.listAllVolumes(0), key=lambda v: -v.name().count(".")):
            if vol.name().startswith(prefix):
                with contextlib.suppress(libvirt.libvirtError):
                    vol.delete(0)
