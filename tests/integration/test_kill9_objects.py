"""kill -9 of the CLI at every journaled step of making a network, a pool, a volume (create and
upload), an ISO of the library and a cloud image (image + metadata: two records), on the real
daemon; then ``kvmgr ops recover`` (another process) must leave exactly the state from before:
no network, pool, pool directory or volume left over.  See tests/integration/test_kill9.py for
the hook (``KVMGR_TEST_CRASH_AFTER``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pycdlib
import pytest

from kvmgr.connect import Connection
from kvmgr.services import storage_pools
from kvmgr.services.cloud_images import _META_SUFFIX as IMAGE_META

from .conftest import Cleanup, purge_prefix
from .test_kill9 import kvmgr

PREFIX = "t-k9obj-"
POOL = f"{PREFIX}pool"


def _state(conn: Connection, pool_dir: Path) -> dict[str, Any]:
    """Networks, pools and volumes named ``PREFIX*``, and the new pool's directory."""
    volumes = set()
    for pool in conn.virconn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        pool.refresh(0)
        volumes |= {f"{pool.name()}/{n}" for n in pool.listVolumes() if n.startswith(PREFIX)}
    return {
        "networks": sorted(
            n.name() for n in conn.virconn.listAllNetworks(0) if n.name().startswith(PREFIX)
        ),
        "pools": sorted(
            p.name() for p in conn.virconn.listAllStoragePools(0) if p.name().startswith(PREFIX)
        ),
        "volumes": sorted(volumes),
        "new pool directory": (pool_dir / "new").exists(),
    }


def _iso(path: Path) -> Path:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="KILL9")
    payload = b"kvmgr kill -9 test\n" * 64
    iso.add_fp(io.BytesIO(payload), len(payload), "/README.TXT;1")
    iso.write(str(path))
    iso.close()
    return path


def _pool(conn: Connection, where: Path) -> None:
    storage_pools.create_pool(conn, POOL, str(where / "existing"))


# name -> (setup, command given the work directory, journal records it makes)
OPERATIONS: dict[
    str, tuple[Callable[[Connection, Path], None], Callable[[Path], list[str]], int]
] = {
    "net-create": (
        lambda c, d: None,
        lambda d: [
            "net",
            "create",
            f"{PREFIX}net",
            "--subnet",
            "10.213.7.0/24",
            "--mode",
            "isolated",
        ],
        1,
    ),
    "pool-create": (
        lambda c, d: None,
        lambda d: ["pool", "create", f"{PREFIX}new", "--path", str(d / "new")],
        1,
    ),
    "vol-create": (_pool, lambda d: ["vol", "create", POOL, f"{PREFIX}vol", "--size", "16M"], 1),
    "vol-upload": (
        _pool,
        lambda d: ["vol", "upload", POOL, f"{PREFIX}up", str(d / "source.img")],
        1,
    ),
    "iso-import": (
        lambda c, d: None,
        lambda d: ["iso", "import", str(d / "media.iso"), "--name", f"{PREFIX}media.iso"],
        1,
    ),
    "image-import": (
        lambda c, d: None,
        lambda d: [
            "image",
            "import",
            str(d / "source.img"),
            "--os",
            "linux2022",
            "--name",
            f"{PREFIX}img",
        ],
        2,
    ),
}
CASES = [
    (name, crash)
    for name, (_setup, _command, records) in OPERATIONS.items()
    for crash in [*(str(n) for n in range(1, records + 1)), f"{records}+"]
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)  # the daemon (root, or qemu for the pool) reads it
    (tmp_path / "source.img").write_bytes(os.urandom(64 * 1024) + b"\0" * (1024 * 1024))
    _iso(tmp_path / "media.iso")
    return tmp_path


@pytest.mark.parametrize(("name", "crash"), CASES, ids=[f"{n}-killed-at-{c}" for n, c in CASES])
def test_kill9_of_object_operations_then_recovery_leaves_nothing(
    conn: Connection, cleanup: Cleanup, workdir: Path, name: str, crash: str
) -> None:
    cleanup.prefix(PREFIX)
    purge_prefix(conn, PREFIX)
    setup, command, _records = OPERATIONS[name]
    setup(conn, workdir)
    before = _state(conn, workdir)
    killed = kvmgr(*command(workdir), crash=crash)
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    if crash.endswith("+"):  # the step acted: the object was there when the process died
        assert _state(conn, workdir) != before
    recovered = kvmgr("ops", "recover")
    assert recovered.returncode == 0, recovered.stderr
    assert "undone:" in recovered.stdout, recovered.stdout
    assert "recovery-failed" not in recovered.stdout, recovered.stdout
    assert _state(conn, workdir) == before, recovered.stdout


def test_the_same_commands_unkilled_make_their_object(
    conn: Connection, cleanup: Cleanup, workdir: Path
) -> None:
    """The control case: without the hook every command succeeds and its object stays."""
    cleanup.prefix(PREFIX)
    purge_prefix(conn, PREFIX)
    _pool(conn, workdir)
    before = _state(conn, workdir)
    for _setup, command, _records in OPERATIONS.values():
        done = kvmgr(*command(workdir))
        assert done.returncode == 0, done.stderr
    after = _state(conn, workdir)
    assert after["networks"] == [f"{PREFIX}net"]
    assert set(after["pools"]) == {POOL, f"{PREFIX}new"}
    assert set(after["volumes"]) - set(before["volumes"]) == {
        f"{POOL}/{PREFIX}vol",
        f"{POOL}/{PREFIX}up",
        f"kvmgr-isos/{PREFIX}media.iso",
        f"kvmgr-images/{PREFIX}img",
        f"kvmgr-images/{PREFIX}img{IMAGE_META}",
    }
    assert after["new pool directory"]
