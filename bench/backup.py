"""Issue 15: backups against virtnbdbackup/virtnbdrestore (Debian's), in the same run.

Two identical running VMs (a 4 GiB qcow2 v3 disk, the same 1 GiB of data), one per tool, so
neither sees the other's checkpoints.  The data is half random (incompressible: media, archives)
and half text-like lines (compressible: logs, configuration), in 64 MiB extents spread over the
disk.  The VMs have no boot device: they run (so both tools take their running-VM path, libvirt
pull-mode backup over NBD) without a guest touching the disk.

- full: ``kvmgr backup create --full VM`` against ``virtnbdbackup -l full`` (into a new
  directory each time), time and bytes stored (all files a point adds, all files of the
  virtnbdbackup directory).
- incremental: both VMs stopped, the same 64 MiB of random 64 KiB writes at scattered offsets
  put into both disks (qemu-io), both started, then ``kvmgr backup create`` against
  ``virtnbdbackup -l inc``; bytes kvmgr read and stored against the data changed.
- restore of the latest point (full + 2 incrementals): ``kvmgr backup restore --as`` (volume
  created, image streamed, VM defined) against ``virtnbdrestore -o DIR`` (image files only).

kvmgr is measured as the command, like-for-like with the peer's command.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt

from bench import cleanup, raw_provision
from bench.core import BenchError, Context, Line, Result, Skip, Target, run_command, timed
from bench.driverfile import NAME_PREFIX

PREFIX = f"{NAME_PREFIX}bk-"
IMAGES = "/var/lib/libvirt/images"
GIB = 1024**3
MIB = 1024**2
CHUNK = 64 * 1024
DISK = 4 * GIB
DATA = 1 * GIB
CHANGED = 64 * MIB


def run(ctx: Context) -> Iterator[Line]:
    if shutil.which("virtnbdbackup") is None or shutil.which("virtnbdrestore") is None:
        yield Skip("backup", "virtnbdbackup is not installed (apt-get install virtnbdbackup)")
        return
    conn = libvirt.open(ctx.system_uri)
    names = {tool: f"{PREFIX}{tool}" for tool in ("kvmgr", "peer")}
    work = ctx.workdir / "backup"
    try:
        _clean(conn)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        env = {"KVMGR_DB_URL": f"sqlite:///{work / 'kvmgr.db'}", "KVMGR_STATE_DIR": str(work)}
        ctx.say("writing 1 GiB of data into two 4 GiB disks")
        source = _data_file(work)
        for name in names.values():
            _vm(conn, ctx, name, source)
        kvmgr = [ctx.kvmgr, "-c", ctx.system_uri, "backup"]
        run_command([*kvmgr, "repo", "add", "bench", str(work / "bench")], env=env)
        plain = ["--no-compress"]
        run_command([*kvmgr, "repo", "add", "plain", str(work / "plain"), *plain], env=env)
        yield from _full(ctx, conn, names, kvmgr, env, work)
        yield from _incremental_and_restore(ctx, conn, names, kvmgr, env, work)
    finally:
        _clean(conn)
        shutil.rmtree(work, ignore_errors=True)
        conn.close()


# ------------------------------------------------------------------------------ measuring
def _full(
    ctx: Context,
    conn: libvirt.virConnect,
    names: dict[str, str],
    kvmgr: list[str],
    env: dict[str, str],
    work: Path,
) -> Iterator[Line]:
    ctx.say("full backups")
    times: dict[str, list[float]] = {"kvmgr": [], "plain": [], "peer": []}
    sizes: dict[str, list[float]] = {"kvmgr": [], "plain": [], "peer": []}
    reps = ctx.reps(1, 3)
    for rep in range(reps + 1):  # the first round warms caches and is thrown away
        order = ["plain", "peer", "kvmgr"] if rep % 2 else ["peer", "plain", "kvmgr"]
        for tool in order:  # the compressing run last: the incrementals build on its point
            if tool in ("kvmgr", "plain"):
                repo = "bench" if tool == "kvmgr" else "plain"
                seconds, point = _kvmgr_backup(kvmgr, env, names["kvmgr"], full=True, repo=repo)
                stored = _tree_size(work / repo / "points" / str(point["id"]))
            else:
                target = work / f"peer-full-{rep}"
                seconds = _peer_backup(ctx, names["peer"], "full", target)
                stored = _tree_size(target)
                if rep < reps:
                    shutil.rmtree(target)
            if rep:
                times[tool].append(seconds)
                sizes[tool].append(stored)
    case = "full, 4 GiB disk with 1 GiB of data, running VM"
    yield Result(
        "backup",
        case,
        "s",
        "kvmgr backup create --full",
        times["kvmgr"],
        "virtnbdbackup -l full",
        times["peer"],
        Target("<=1.0x", max_ratio=1.0),
    )
    yield Result(
        "backup",
        case + ", repository without compression",
        "s",
        "kvmgr backup create --full",
        times["plain"],
        "virtnbdbackup -l full",
        times["peer"],
        Target("<=1.0x", max_ratio=1.0),
    )
    yield Result(
        "backup",
        case + ", repository without compression: bytes stored",
        "B",
        "kvmgr repository point",
        sizes["plain"],
        "virtnbdbackup directory",
        sizes["peer"],
        Target("<=1.0x", max_ratio=1.0),
    )
    yield Result(
        "backup",
        case + ": bytes stored",
        "B",
        "kvmgr repository point",
        sizes["kvmgr"],
        "virtnbdbackup directory",
        sizes["peer"],
        Target("<=1.0x", max_ratio=1.0),
        note="data: half random, half text-like lines",
    )


def _incremental_and_restore(
    ctx: Context,
    conn: libvirt.virConnect,
    names: dict[str, str],
    kvmgr: list[str],
    env: dict[str, str],
    work: Path,
) -> Iterator[Line]:
    peer_dir = work / f"peer-full-{ctx.reps(1, 3)}"  # the last full backup's directory
    times: dict[str, list[float]] = {"kvmgr": [], "peer": []}
    read: list[float] = []
    stored: list[float] = []
    rng = random.Random(15)
    latest = ""
    for rep in range(2):  # two incrementals: the restore below is of full + 2 incrementals
        ctx.say(f"incremental {rep + 1}: 64 MiB of scattered writes into both disks")
        offsets = sorted(rng.sample(range(DISK // CHUNK), CHANGED // CHUNK))
        patch = work / "patch.bin"
        patch.write_bytes(os.urandom(CHUNK))
        for name in names.values():
            _write_scattered(conn, name, offsets, patch)
        for tool in ("kvmgr", "peer") if rep % 2 else ("peer", "kvmgr"):
            if tool == "kvmgr":
                seconds, point = _kvmgr_backup(kvmgr, env, names["kvmgr"], full=False)
                if point["kind"] != "incremental":
                    raise BenchError(f"kvmgr took a {point['kind']} backup, not an incremental")
                latest = point["id"]
                read.append(float(point["bytes_read"]))
                stored.append(float(point["bytes_stored"]))
            else:
                seconds = _peer_backup(ctx, names["peer"], "inc", peer_dir)
            times[tool].append(seconds)
    case = "incremental after 64 MiB of scattered 64 KiB writes"
    yield Result(
        "backup",
        case,
        "s",
        "kvmgr backup create",
        times["kvmgr"],
        "virtnbdbackup -l inc",
        times["peer"],
        Target("<=1.0x", max_ratio=1.0),
    )
    changed = [float(CHANGED)] * len(read)
    for what, values in (("read", read), ("stored", stored)):
        yield Result(
            "backup",
            f"{case}: bytes {what}",
            "B",
            f"kvmgr bytes {what}",
            values,
            "data changed",
            changed,
            Target("<=1.5x", max_ratio=1.5),
            note="the written blocks are random: nothing compresses",
        )
    yield from _restore(ctx, conn, kvmgr, env, work, latest, peer_dir)


def _restore(
    ctx: Context,
    conn: libvirt.virConnect,
    kvmgr: list[str],
    env: dict[str, str],
    work: Path,
    point: str,
    peer_dir: Path,
) -> Iterator[Line]:
    ctx.say("restores of the latest point (full + 2 incrementals)")
    times: dict[str, list[float]] = {"kvmgr": [], "peer": []}
    reps = ctx.reps(1, 3)
    for rep in range(reps):
        for tool in ("kvmgr", "peer") if rep % 2 else ("peer", "kvmgr"):
            if tool == "kvmgr":
                name = f"{PREFIX}restored"
                argv = [*kvmgr, "restore", f"{PREFIX}kvmgr", "--point", point, "--as", name]
                times[tool].append(timed(lambda argv=argv: run_command(argv, env=env))())
                cleanup.remove_domain(conn, name, disks_under=[IMAGES])
            else:
                out = work / "peer-restored"
                shutil.rmtree(out, ignore_errors=True)
                argv = ["virtnbdrestore", "-i", str(peer_dir), "-o", str(out)]
                times[tool].append(timed(lambda argv=argv: run_command(argv))())
                shutil.rmtree(out)
    yield Result(
        "backup",
        "restore of the latest point (full + 2 incrementals)",
        "s",
        "kvmgr backup restore --as",
        times["kvmgr"],
        "virtnbdrestore -o",
        times["peer"],
        Target("<=1.0x", max_ratio=1.0),
        note="kvmgr also defines the VM; virtnbdrestore writes the image files only",
    )


def _kvmgr_backup(
    kvmgr: list[str], env: dict[str, str], name: str, *, full: bool, repo: str = "bench"
) -> tuple[float, dict[str, object]]:
    argv = [*kvmgr, "create", name, "--repo", repo, "-o", "json"] + (["--full"] if full else [])
    out: list[str] = []
    seconds = timed(lambda: out.append(run_command(argv, env=env)))()
    point: dict[str, object] = json.loads(out[0])
    return seconds, point


def _peer_backup(ctx: Context, name: str, level: str, target: Path) -> float:
    argv = ["virtnbdbackup", "-U", ctx.system_uri, "-d", name, "-l", level, "-o", str(target)]
    return timed(lambda: run_command([*argv, "-n"]))()


# ------------------------------------------------------------------------------ set-up
def _data_file(work: Path) -> Path:
    """1 GiB in 64 MiB extents: even extents random, odd ones text-like lines."""
    path = work / "data.bin"
    rng = random.Random(1)
    words = [b"kvmgr", b"backup", b"checkpoint", b"volume", b"INFO", b"WARN", b"qemu", b"disk"]
    with open(path, "wb") as out:
        for extent in range(DATA // (64 * MIB)):
            if extent % 2 == 0:
                out.write(os.urandom(64 * MIB))
                continue
            written = 0
            while written < 64 * MIB:
                line = b" ".join(rng.choice(words) for _ in range(8))
                block = b"%d %s %08x\n" % (written, line, rng.getrandbits(32))
                out.write(block)
                written += len(block)
            out.truncate((extent + 1) * 64 * MIB)
            out.seek((extent + 1) * 64 * MIB)
    return path


def _vm(conn: libvirt.virConnect, ctx: Context, name: str, source: Path) -> None:
    """A running VM whose 4 GiB disk holds ``source`` spread in 64 MiB extents (every 256 MiB)."""
    disk = f"{IMAGES}/{name}.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1", disk, str(DISK)],
        check=True,
    )
    commands = []
    extents = DATA // (64 * MIB)
    with open(source, "rb") as data:
        for extent in range(extents):
            piece = Path(f"{source}.{extent}")
            piece.write_bytes(data.read(64 * MIB))
            commands += ["-c", f"write -q -s {piece} {extent * 256 * MIB} {64 * MIB}"]
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, disk], check=True, capture_output=True)
    for extent in range(extents):
        Path(f"{source}.{extent}").unlink()
    xml = raw_provision.domain_xml(name, disk, "qemu").decode()
    conn.defineXML(xml).create()


def _write_scattered(conn: libvirt.virConnect, name: str, offsets: list[int], patch: Path) -> None:
    """Stop the VM, write 64 KiB of ``patch`` at each chunk offset, start it again."""
    dom = conn.lookupByName(name)
    if dom.isActive():
        dom.destroy()
    disk = f"{IMAGES}/{name}.qcow2"
    commands: list[str] = []
    for offset in offsets:
        commands += ["-c", f"write -q -s {patch} {offset * CHUNK} {CHUNK}"]
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, disk], check=True, capture_output=True)
    dom.create()


def _tree_size(path: Path) -> float:
    return float(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))


def _clean(conn: libvirt.virConnect) -> None:
    cleanup.sweep(conn, PREFIX, disks_under=[IMAGES])
    cleanup.sweep_files(conn, IMAGES, PREFIX)
