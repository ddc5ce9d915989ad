"""Issue 8.7: snapshot create and revert on a shut-off VM with a qcow2 disk (real daemon).

Two identical VMs (1 GiB qcow2, shut off), one per tool, so neither sees the other's snapshots.
Both tools take internal snapshots here (kvmgr's default for qcow2; virsh's default), so they do
the same work.  Reverts go back to a snapshot ``base`` each tool took at setup.

kvmgr is measured as a library call (``services.snapshots``) and, when the ``kvmgr snap``
command exists, as a command, which is the like-for-like comparison with ``virsh``.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable, Iterator

import libvirt

from bench import cleanup, raw_provision
from bench.core import Context, Line, Result, Skip, interleaved, run_command, timed
from bench.driverfile import NAME_PREFIX
from bench.provision import IMAGES

PREFIX = f"{NAME_PREFIX}snap-"


def run(ctx: Context) -> Iterator[Line]:
    if importlib.util.find_spec("kvmgr.services.snapshots") is None:
        yield Skip("snapshot", "not available yet: kvmgr.services.snapshots is missing")
        return
    from kvmgr.connect import open_connection
    from kvmgr.services import snapshots

    conn = open_connection(ctx.system_uri)
    names = {tool: f"{PREFIX}{tool}" for tool in ("kvmgr", "virsh", "cli")}
    try:
        _clean(conn.virconn)
        for name in names.values():
            raw_provision.main(ctx.system_uri, name, f"{IMAGES}/{name}.qcow2", "qemu")
        snapshots.create_snapshot(conn, names["kvmgr"], "base")
        virsh = ["virsh", "-q", "-c", ctx.system_uri]
        run_command([*virsh, "snapshot-create-as", names["virsh"], "base"])
        snapshots.create_snapshot(conn, names["cli"], "base")
        serial = itertools.count()

        def fresh() -> str:
            return f"s{next(serial)}"

        subjects: dict[str, Callable[[], float]] = {
            "kvmgr create": timed(lambda: snapshots.create_snapshot(conn, names["kvmgr"], fresh())),
            "virsh create": timed(
                lambda: run_command([*virsh, "snapshot-create-as", names["virsh"], fresh()])
            ),
            "kvmgr revert": timed(lambda: snapshots.revert_snapshot(conn, names["kvmgr"], "base")),
            "virsh revert": timed(
                lambda: run_command([*virsh, "snapshot-revert", names["virsh"], "base"])
            ),
        }
        cli = importlib.util.find_spec("kvmgr.cli.snap") is not None
        if cli:
            kvmgr = [ctx.kvmgr, "-c", ctx.system_uri, "snap"]
            subjects["cli create"] = timed(
                lambda: run_command([*kvmgr, "create", names["cli"], fresh()])
            )
            subjects["cli revert"] = timed(
                lambda: run_command([*kvmgr, "revert", names["cli"], "base"])
            )
        ctx.say("snapshot create and revert")
        measured = interleaved(subjects, ctx.reps(5, 11))
        for action, virsh_verb in (("create", "snapshot-create-as"), ("revert", "snapshot-revert")):
            yield Result(
                "snapshot",
                f"{action} (shut off, qcow2, internal)",
                "s",
                f"snapshots.{action}_snapshot (library)",
                measured[f"kvmgr {action}"],
                f"virsh {virsh_verb}",
                measured[f"virsh {action}"],
                note="library call in-process against a command; see the CLI line",
            )
            if cli:
                yield Result(
                    "snapshot",
                    f"{action} (shut off, qcow2, internal)",
                    "s",
                    f"kvmgr snap {action}",
                    measured[f"cli {action}"],
                    f"virsh {virsh_verb}",
                    measured[f"virsh {action}"],
                )
        if not cli:
            yield Skip("snapshot", "CLI line not available yet: kvmgr.cli.snap is missing")
    finally:
        _clean(conn.virconn)
        conn.close()


def _clean(conn: libvirt.virConnect) -> None:
    cleanup.sweep(conn, PREFIX, disks_under=[IMAGES])
    cleanup.sweep_files(conn, IMAGES, PREFIX)
