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


# ------------------------------------------------------------------ deletes: rolled forward
DOOMED = f"{PREFIX}doomed"
DIR_POOL = f"{PREFIX}dpool"
FOREIGN = "notes.txt"  # a file kvmgr did not make in the pool's directory: never deleted


def _delete_state(conn: Connection, workdir: Path) -> dict[str, Any]:
    state = _state(conn, workdir)
    where = workdir / "dpool"
    state["dpool files"] = sorted(os.listdir(where)) if where.exists() else None
    return state


def _two_networks(conn: Connection, _workdir: Path) -> None:
    for name, subnet in ((DOOMED, "10.213.8.0/24"), (f"{PREFIX}other", "10.213.9.0/24")):
        done = kvmgr("net", "create", name, "--subnet", subnet, "--mode", "isolated")
        assert done.returncode == 0, done.stderr


def _full_pool(conn: Connection, workdir: Path) -> None:
    where = workdir / "dpool"
    storage_pools.create_pool(conn, DIR_POOL, str(where))
    for volume in ("a.qcow2", "b.img"):
        done = kvmgr("vol", "create", DIR_POOL, volume, "--size", "1M")
        assert done.returncode == 0, done.stderr
    (where / FOREIGN).write_text("someone's notes\n")
    os.chmod(where / FOREIGN, 0o644)


def _volumes(conn: Connection, workdir: Path) -> None:
    _pool(conn, workdir)
    for volume in (DOOMED, f"{PREFIX}keep"):
        done = kvmgr("vol", "create", POOL, volume, "--size", "1M")
        assert done.returncode == 0, done.stderr


def _imported(kind: str) -> Callable[[Connection, Path], None]:
    def setup(_conn: Connection, workdir: Path) -> None:
        if kind == "iso":
            args = ["iso", "import", str(workdir / "media.iso"), "--name", f"{DOOMED}.iso"]
        else:
            args = ["image", "import", str(workdir / "source.img"), "--os", "linux2022"]
            args += ["--name", DOOMED]
        done = kvmgr(*args)
        assert done.returncode == 0, done.stderr

    return setup


def _gone_network(state: dict[str, Any]) -> None:
    state["networks"].remove(DOOMED)


def _gone_pool(state: dict[str, Any]) -> None:
    state["pools"].remove(DIR_POOL)
    state["volumes"] = [v for v in state["volumes"] if not v.startswith(DIR_POOL)]
    state["dpool files"] = [FOREIGN]  # the directory stays: a file kvmgr did not make is in it


def _gone_volume(name: str) -> Callable[[dict[str, Any]], None]:
    def drop(state: dict[str, Any]) -> None:
        state["volumes"] = [v for v in state["volumes"] if v.split("/", 1)[1] not in name]

    return drop


# name -> (setup, command, journal records, the state once the object is gone)
DELETES: dict[
    str,
    tuple[
        Callable[[Connection, Path], None],
        list[str],
        int,
        Callable[[dict[str, Any]], None],
    ],
] = {
    "net-delete": (_two_networks, ["net", "delete", DOOMED], 2, _gone_network),
    "pool-delete-force": (_full_pool, ["pool", "delete", DIR_POOL, "--force"], 3, _gone_pool),
    "vol-delete": (_volumes, ["vol", "delete", POOL, DOOMED], 1, _gone_volume((DOOMED,))),
    "iso-delete": (
        _imported("iso"),
        ["iso", "delete", f"{DOOMED}.iso"],
        1,
        _gone_volume((f"{DOOMED}.iso",)),
    ),
    "image-delete": (
        _imported("image"),
        ["image", "delete", DOOMED],
        2,
        _gone_volume((DOOMED, f"{DOOMED}{IMAGE_META}")),
    ),
}
DELETE_CASES = [
    (name, crash)
    for name, (_setup, _command, records, _gone) in DELETES.items()
    for crash in [*(str(n) for n in range(1, records + 1)), f"{records}+"]
]


@pytest.mark.parametrize(
    ("name", "crash"), DELETE_CASES, ids=[f"{n}-killed-at-{c}" for n, c in DELETE_CASES]
)
def test_kill9_of_a_delete_then_recovery_finishes_it_and_touches_nothing_else(
    conn: Connection, cleanup: Cleanup, workdir: Path, name: str, crash: str
) -> None:
    cleanup.prefix(PREFIX)
    purge_prefix(conn, PREFIX)
    setup, command, _records, gone = DELETES[name]
    setup(conn, workdir)
    expected = _delete_state(conn, workdir)
    gone(expected)
    killed = kvmgr(*command, crash=crash)
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    if not crash.endswith("+"):
        assert _delete_state(conn, workdir) != expected  # the object is (partly) still there
    recovered = kvmgr("ops", "recover")
    assert recovered.returncode == 0, recovered.stderr
    assert "finished:" in recovered.stdout, recovered.stdout  # rolled forward, and says so
    assert "recovery-failed" not in recovered.stdout, recovered.stdout
    assert _delete_state(conn, workdir) == expected, recovered.stdout
    listed = kvmgr("ops", "list", "-o", "json")
    assert f'"kind": "{" ".join(command[:2])}"' in listed.stdout, listed.stdout
    assert '"state": "recovered"' in listed.stdout, listed.stdout


def test_the_same_deletes_unkilled_remove_their_object_alone(
    conn: Connection, cleanup: Cleanup, workdir: Path
) -> None:
    """The control case: without the hook each delete removes its object and nothing else."""
    cleanup.prefix(PREFIX)
    for setup, command, _records, gone in DELETES.values():
        purge_prefix(conn, PREFIX)
        setup(conn, workdir)
        expected = _delete_state(conn, workdir)
        gone(expected)
        done = kvmgr(*command)
        assert done.returncode == 0, done.stderr
        assert _delete_state(conn, workdir) == expected
