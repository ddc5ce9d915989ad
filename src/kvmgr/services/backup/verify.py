"""Verifying backup points: re-read every stored chunk and check it against the manifest.

A point is good when its manifest parses, each disk's index matches the checksum in the
manifest, every chunk the index names can be read (decompressed where it was compressed) and
hashes to its recorded sha256, and its chain holds: the parent it was taken on top of was a
point of the same VM and taken before it.  A parent deleted since is not a fault (every point
maps its whole disk), but it is reported, since that VM's next backup is then full.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from kvmgr.errors import KvmgrError
from kvmgr.services.backup.repository import CHUNK, Repository, chunk_data


@dataclass
class Verdict:
    point: str
    chunks: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "ok": self.ok,
            "chunks": self.chunks,
            "bytes": self.bytes,
            "problems": self.problems,
            "notes": self.notes,
        }


def verify_point(repo: Repository, point: str) -> Verdict:
    verdict = Verdict(point)
    try:
        manifest = repo.manifest(point)
    except (KvmgrError, ValueError) as err:
        verdict.problems.append(f"manifest: {err}")
        return verdict
    _check_chain(repo, manifest, verdict)
    for disk in manifest.get("disks", []):
        target = disk["target"]
        try:
            chunks = repo.disk_map(manifest, target)
        except (OSError, ValueError, KeyError) as err:
            verdict.problems.append(f"disk {target}: index: {err}")
            continue
        capacity = int(disk["capacity"])
        fds: dict[str, int] = {}
        try:
            for number, ref in sorted(chunks.items()):
                where = f"disk {target} chunk {number} (in {ref.pack})"
                if number * CHUNK >= capacity:
                    verdict.problems.append(f"{where}: beyond the disk's end")
                    continue
                try:
                    if ref.pack not in fds:
                        fds[ref.pack] = repo.open_pack(ref.pack)
                    data = chunk_data(fds[ref.pack], ref, min(CHUNK, capacity - number * CHUNK))
                except (OSError, ValueError, KvmgrError) as err:
                    verdict.problems.append(f"{where}: {err}")
                    continue
                if hashlib.sha256(data).digest() != ref.sha256:
                    verdict.problems.append(f"{where}: checksum mismatch")
                verdict.chunks += 1
                verdict.bytes += len(data)
        finally:
            for fd in fds.values():
                os.close(fd)
    return verdict


def _check_chain(repo: Repository, manifest: dict[str, Any], verdict: Verdict) -> None:
    parent = manifest.get("parent")
    if manifest.get("kind") == "incremental" and not parent:
        verdict.problems.append("chain: an incremental point names no parent")
    if not parent:
        return
    try:
        earlier = repo.manifest(parent)
    except KvmgrError:
        verdict.notes.append(f"chain: parent {parent} was deleted (this point is still whole)")
        return
    if earlier["vm"]["uuid"] != manifest["vm"]["uuid"]:
        verdict.problems.append(f"chain: parent {parent} is a point of another VM")
    if str(earlier.get("created", "")) > str(manifest.get("created", "")):
        verdict.problems.append(f"chain: parent {parent} is newer than this point")


def verify_all(repo: Repository) -> list[Verdict]:
    return [verify_point(repo, point) for point in repo.point_ids()]
