"""The backup repository, verify and the restored qcow2 layout, without libvirt.

Points are written through the same :class:`DiskWriter` the backup service feeds from NBD; the
restored image is checked by QEMU's own tools (``qemu-img check`` and a byte comparison with the
raw disk the chunks came from).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvmgr.errors import InvalidInput, NotFound
from kvmgr.services.backup import compress
from kvmgr.services.backup.repository import CHUNK, Repository
from kvmgr.services.backup.restore import qcow2_stream
from kvmgr.services.backup.verify import verify_point

CAPACITY = 8 * 1024 * 1024 + 25 * 512  # not a multiple of the chunk: the tail chunk is short


def _point(
    repo: Repository, point: str, chunks: dict[int, bytes], parent: dict[str, Any] | None
) -> dict[str, Any]:
    repo.begin(point)
    writer = repo.disk_writer(point, "vda", CAPACITY)
    if parent is not None:
        writer.chunks = dict(repo.disk_map(parent, "vda"))
    for number, data in chunks.items():
        writer.put(number, data)
    writer.close()
    manifest: dict[str, Any] = {
        "format": 1,
        "id": point,
        "vm": {"name": "t", "uuid": "u-1", "xml": "<domain/>"},
        "kind": "incremental" if parent else "full",
        "parent": parent["id"] if parent else None,
        "created": point,
        "disks": [{"target": "vda", "capacity": CAPACITY}],
    }
    repo.commit(manifest, [writer])
    return repo.manifest(point)


def _disk(chunks: dict[int, bytes]) -> bytes:
    image = bytearray(CAPACITY)
    for number, data in chunks.items():
        image[number * CHUNK : number * CHUNK + len(data)] = data
    return bytes(image)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo")


def _data() -> tuple[dict[int, bytes], dict[int, bytes]]:
    rng = random.Random(7)
    text = b"kvmgr backup " * (CHUNK // 13 + 1)
    first = {
        0: text[:CHUNK],  # compressible
        3: rng.randbytes(CHUNK),
        5: bytes(CHUNK),  # zeros: never stored
        100: rng.randbytes(CHUNK),
        CAPACITY // CHUNK: rng.randbytes(CAPACITY % CHUNK),  # the short tail
    }
    second = {3: rng.randbytes(CHUNK), 100: bytes(CHUNK), 64: text[:CHUNK].upper()}
    return first, second


def test_full_then_incremental_maps_the_whole_disk(repo: Repository) -> None:
    first, second = _data()
    full = _point(repo, "a.1", first, None)
    inc = _point(repo, "a.2", second, full)
    assert sorted(repo.disk_map(full, "vda")) == [0, 3, 100, CAPACITY // CHUNK]
    assert sorted(repo.disk_map(inc, "vda")) == [0, 3, 64, CAPACITY // CHUNK]  # 100 is zero now
    # the incremental read and stored only what changed; unchanged chunks point at a.1's pack
    assert inc["disks"][0]["chunks_read"] == 3
    assert repo.disk_map(inc, "vda")[0].pack == "a.1/vda.pack"
    if compress.available():
        assert full["bytes_stored"] < full["bytes_read"] - CHUNK  # text compressed, zeros skipped
    assert verify_point(repo, "a.1").ok and verify_point(repo, "a.2").ok


def test_verify_catches_a_flipped_byte(repo: Repository) -> None:
    first, _ = _data()
    _point(repo, "a.1", first, None)
    pack = repo.points / "a.1" / "vda.pack"
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    pack.write_bytes(bytes(raw))
    verdict = verify_point(repo, "a.1")
    assert not verdict.ok
    assert any("chunk" in problem for problem in verdict.problems)


def test_verify_catches_a_damaged_index_and_a_broken_chain(repo: Repository) -> None:
    first, second = _data()
    full = _point(repo, "a.1", first, None)
    _point(repo, "a.2", second, full)
    index = repo.points / "a.2" / "vda.index"
    index.write_bytes(index.read_bytes()[:-1])
    assert any("index" in p for p in verify_point(repo, "a.2").problems)
    manifest = repo.manifest("a.1")
    manifest["kind"], manifest["parent"] = "incremental", None
    (repo.points / "a.1" / "manifest.json").write_text(__import__("json").dumps(manifest))
    assert any("chain" in p for p in verify_point(repo, "a.1").problems)


def test_deleting_a_point_keeps_what_later_points_need(repo: Repository) -> None:
    first, second = _data()
    full = _point(repo, "a.1", first, None)
    _point(repo, "a.2", second, full)
    repo.delete_point("a.1")
    assert repo.point_ids() == ["a.2"]
    assert (repo.points / "a.1" / "vda.pack").exists()  # a.2 still maps chunk 0 into it
    assert not (repo.points / "a.1" / "vda.index").exists()
    assert verify_point(repo, "a.2").ok
    repo.delete_point("a.2")
    assert list(repo.points.iterdir()) == []
    with pytest.raises(NotFound):
        repo.manifest("a.2")


def test_partial_point_is_never_listed_and_discard_removes_it(repo: Repository) -> None:
    repo.begin("a.1")
    writer = repo.disk_writer("a.1", "vda", CAPACITY)
    writer.put(0, b"x" * CHUNK)
    writer.close()
    assert repo.point_ids() == []
    repo.discard("a.1")
    assert list(repo.points.iterdir()) == []


def test_point_ids_cannot_leave_the_repository(repo: Repository) -> None:
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(InvalidInput):
            repo.manifest(bad)


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("data")
    with pytest.raises(InvalidInput):
        Repository.init(tmp_path)
    with pytest.raises(NotFound):
        Repository(tmp_path)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_restored_qcow2_is_valid_and_holds_the_disk(repo: Repository, tmp_path: Path) -> None:
    first, second = _data()
    full = _point(repo, "a.1", first, None)
    inc = _point(repo, "a.2", second, full)
    for manifest, content in ((full, first), (inc, {**first, **second})):
        image = tmp_path / f"{manifest['id']}.qcow2"
        with open(image, "wb") as out:
            for block in qcow2_stream(repo, repo.disk_map(manifest, "vda"), CAPACITY):
                out.write(block)
        raw = tmp_path / "expected.raw"
        raw.write_bytes(_disk(content))
        check = subprocess.run(
            ["qemu-img", "check", str(image)], check=False, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        same = subprocess.run(
            ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), str(image)],
            check=False,
            capture_output=True,
            text=True,
        )
        assert same.returncode == 0, same.stdout + same.stderr
        os.unlink(image)


def test_a_repository_without_compression_stores_chunks_as_they_are(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "plain", compress=False)
    assert Repository(tmp_path / "plain").compress is False
    first, _ = _data()
    full = _point(repo, "a.1", first, None)
    assert all(ref.flags == 0 for ref in repo.disk_map(full, "vda").values())
    assert full["bytes_stored"] == sum(len(d) for d in first.values() if any(d))
    assert verify_point(repo, "a.1").ok


def test_retention_keeps_the_newest_and_one_per_day_and_week() -> None:
    from datetime import UTC, datetime, timedelta

    from kvmgr.services.backup.retention import Policy, keep

    start = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)  # a Monday
    # two points a day for 21 days: p0 (oldest) .. p41 (newest)
    points = [(f"p{i}", start + timedelta(hours=12 * i)) for i in range(42)]
    assert keep(points, Policy(keep_last=3)) == {"p41", "p40", "p39"}
    # newest of each of the last 2 days, plus the newest of each of the last 3 ISO weeks
    daily = keep(points, Policy(keep_daily=2))
    assert daily == {"p41", "p39"}
    weekly = keep(points, Policy(keep_weekly=3))
    assert weekly == {"p41", "p27", "p13"}  # each week's last point, Sunday 13:00
    assert keep(points, Policy(keep_last=1, keep_daily=2, keep_weekly=3)) == {
        "p41",
        "p39",
        "p27",
        "p13",
    }
    with pytest.raises(InvalidInput):
        Policy()
    with pytest.raises(InvalidInput):
        Policy(keep_last=-1)


def test_metrics_say_last_success_duration_and_failures(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from kvmgr.control.backup_models import BackupPoint, BackupRepo
    from kvmgr.control.backups import metric_lines
    from kvmgr.store.db import Store

    store = Store(f"sqlite:///{tmp_path / 'kvmgr.db'}")
    moment = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    with store.session() as session:
        session.add(BackupRepo(name="main", path=str(tmp_path)))
        session.flush()
        for point, state, seconds in (("a.1", "good", 3.5), ("a.2", "failed", 1.0)):
            session.add(
                BackupPoint(
                    id=point,
                    repo="main",
                    vm_name='we"b',
                    vm_uuid="u",
                    host="local",
                    kind="full",
                    state=state,
                    created=moment,
                    duration=seconds,
                )
            )
    lines = metric_lines(store)
    store.dispose()
    stamp = int(moment.timestamp())
    assert f'kvmgr_backup_last_success_timestamp_seconds{{vm="we\\"b"}} {stamp}' in lines
    assert 'kvmgr_backup_last_duration_seconds{vm="we\\"b"} 3.500' in lines
    assert 'kvmgr_backup_failures{vm="we\\"b"} 1' in lines


def test_zero_chunks_are_told_from_data_in_any_buffer() -> None:
    from kvmgr.services.backup.repository import is_zero

    for kind in (bytes, bytearray, lambda b: memoryview(bytearray(b))):
        assert is_zero(kind(bytes(CHUNK)))
        assert is_zero(kind(bytes(512)))  # the disk's short tail
        for at in (0, CHUNK // 2, CHUNK - 1):
            data = bytearray(CHUNK)
            data[at] = 1
            assert not is_zero(kind(bytes(data))), at
