"""Shared fixtures of the integration tests: the real daemon, a connection, the demo ISO, cleanup.

Every test in tests/integration is marked ``integration`` here, so ``pytest -m "not integration"``
runs the fast suite only.  Tests create objects with their own prefix and register them (or the
prefix) with the ``cleanup`` fixture, which removes them at the end even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.host import daemons
from kvmgr.images.demo_iso import build_demo_iso

SYSTEM_URI = "qemu:///system"
#: Where the demo ISO is cached across runs; the builder's stamp decides when to rebuild.
DEMO_ISO_CACHE = Path(os.environ.get("KVMGR_TEST_CACHE", "/var/cache/kvmgr-test")) / "demo.iso"
_INTEGRATION_DIR = Path(__file__).parent

_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    """qemu:///system, with libvirt's daemons started first if none answers."""
    daemons.start()
    return SYSTEM_URI


@pytest.fixture(scope="session")
def conn(libvirt_uri: str) -> Iterator[Connection]:
    connection = open_connection(libvirt_uri)
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def demo_iso() -> Path:
    """The demo/test ISO, built once and reused across runs while its inputs are unchanged."""
    DEMO_ISO_CACHE.parent.mkdir(parents=True, exist_ok=True)
    DEMO_ISO_CACHE.parent.chmod(0o755)  # QEMU runs as another user and must reach the ISO
    return build_demo_iso(DEMO_ISO_CACHE).path


# --------------------------------------------------------------------------------- cleanup
def remove_vm(conn: Connection, name: str) -> None:
    """Destroy and undefine VM ``name`` if it exists (with its snapshot metadata, not disks)."""
    try:
        dom = conn.virconn.lookupByName(name)
    except libvirt.libvirtError:
        return
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    try:
        dom.undefineFlags(_UNDEFINE_FLAGS)
    except libvirt.libvirtError:
        dom.undefine()


def remove_network(conn: Connection, name: str) -> None:
    try:
        net = conn.virconn.networkLookupByName(name)
    except libvirt.libvirtError:
        return
    with contextlib.suppress(libvirt.libvirtError):
        if net.isActive():
            net.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        net.undefine()


def remove_volume(conn: Connection, pool: str, name: str) -> None:
    try:
        vol = conn.virconn.storagePoolLookupByName(pool).storageVolLookupByName(name)
    except libvirt.libvirtError:
        return
    with contextlib.suppress(libvirt.libvirtError):
        vol.delete(0)


def remove_pool(conn: Connection, name: str) -> None:
    """Stop and undefine a pool; its directory and volumes stay (tests delete those first)."""
    try:
        pool = conn.virconn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        return
    with contextlib.suppress(libvirt.libvirtError):
        if pool.isActive():
            pool.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        pool.undefine()


def purge_prefix(conn: Connection, prefix: str) -> None:
    """Remove every VM, network, volume (in any pool) and pool whose name starts with ``prefix``.

    Only names with the caller's own prefix are touched, so concurrent runs of other prefixes
    are safe.  VMs go first, so their volumes are no longer in use.
    """
    if len(prefix) < 3:
        raise ValueError(f"prefix {prefix!r} is too short to be safe")
    for dom in conn.virconn.listAllDomains(0):
        if dom.name().startswith(prefix):
            remove_vm(conn, dom.name())
    for net in conn.virconn.listAllNetworks(0):
        if net.name().startswith(prefix):
            remove_network(conn, net.name())
    for pool in conn.virconn.listAllStoragePools(0):
        with contextlib.suppress(libvirt.libvirtError):
            if pool.isActive():
                pool.refresh(0)
                for vol in pool.listAllVolumes(0):
                    if vol.name().startswith(prefix):
                        remove_volume(conn, pool.name(), vol.name())
        if pool.name().startswith(prefix):
            remove_pool(conn, pool.name())


class Cleanup:
    """Things a test made, removed in reverse order at teardown whatever happened."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._undo: list[tuple[str, object]] = []

    def vm(self, name: str) -> str:
        self._undo.append(("vm", name))
        return name

    def network(self, name: str) -> str:
        self._undo.append(("network", name))
        return name

    def volume(self, pool: str, name: str) -> str:
        self._undo.append(("volume", (pool, name)))
        return name

    def pool(self, name: str) -> str:
        self._undo.append(("pool", name))
        return name

    def prefix(self, prefix: str) -> str:
        """Purge everything named ``prefix*`` at teardown (and now, in case a crash left some)."""
        purge_prefix(self.conn, prefix)
        self._undo.append(("prefix", prefix))
        return prefix

    def run(self) -> None:
        errors = []
        while self._undo:
            kind, what = self._undo.pop()
            try:
                self._remove(kind, what)
            except Exception as err:  # clean up the rest, then report all failures
                errors.append(f"{kind} {what}: {err}")
        if errors:
            raise AssertionError("cleanup failed: " + "; ".join(errors))

    def _remove(self, kind: str, what: object) -> None:
        if kind == "vm":
            remove_vm(self.conn, str(what))
        elif kind == "network":
            remove_network(self.conn, str(what))
        elif kind == "pool":
            remove_pool(self.conn, str(what))
        elif kind == "prefix":
            purge_prefix(self.conn, str(what))
        elif kind == "volume":
            pool, name = what  # type: ignore[misc]
            remove_volume(self.conn, pool, name)


@pytest.fixture
def cleanup(conn: Connection) -> Iterator[Cleanup]:
    """Per-test cleanup: register VMs, networks, volumes, pools or a prefix to remove."""
    registry = Cleanup(conn)
    try:
        yield registry
    finally:
        registry.run()


@pytest.fixture(scope="module")
def module_cleanup(conn: Connection) -> Iterator[Cleanup]:
    """Like ``cleanup`` but for module-scoped resources (a guest shared by several tests)."""
    registry = Cleanup(conn)
    try:
        yield registry
    finally:
        registry.run()


@pytest.fixture(scope="session")
def iso(demo_iso: Path) -> str:
    """The demo ISO's path as a string, the form ``VMSpec.iso`` takes."""
    return str(demo_iso)
