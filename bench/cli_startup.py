"""Issue 8.6: CLI start-up, ``kvmgr --version`` and ``kvmgr vm list`` on an empty host.

The empty host is a test:/// driver file with no domains, so no daemon's speed enters the figure.
Baselines: ``virt-install --version`` (the other Python CLI of the field) and ``virsh list``.
"""

from __future__ import annotations

from collections.abc import Iterator

from bench.core import Context, Line, Result, Target, interleaved, timed_command
from bench.driverfile import write_driver_file

NOT_SLOWER_THAN_VIRT_INSTALL = Target("<=1.0x virt-install", max_ratio=1.0)


def run(ctx: Context) -> Iterator[Line]:
    uri = write_driver_file(ctx.workdir / "empty.xml", 0)
    reps = ctx.reps(7, 15)
    ctx.say("CLI start-up: --version")
    version = interleaved(
        {
            "kvmgr": timed_command([ctx.kvmgr, "--version"]),
            "virt-install": timed_command(["virt-install", "--version"]),
        },
        reps,
    )
    yield Result(
        "cli-startup",
        "--version",
        "s",
        "kvmgr --version",
        version["kvmgr"],
        "virt-install --version",
        version["virt-install"],
        NOT_SLOWER_THAN_VIRT_INSTALL,
    )
    ctx.say("CLI start-up: vm list on an empty host")
    listing = interleaved(
        {
            "kvmgr": timed_command([ctx.kvmgr, "-c", uri, "vm", "list"]),
            "virt-install": timed_command(["virt-install", "--version"]),
            "virsh": timed_command(["virsh", "-c", uri, "list"]),
        },
        reps,
    )
    yield Result(
        "cli-startup",
        "vm list (empty host)",
        "s",
        "kvmgr vm list",
        listing["kvmgr"],
        "virt-install --version",
        listing["virt-install"],
        NOT_SLOWER_THAN_VIRT_INSTALL,
    )
    yield Result(
        "cli-startup",
        "vm list (empty host)",
        "s",
        "kvmgr vm list",
        listing["kvmgr"],
        "virsh list",
        listing["virsh"],
        note="virsh is C; shown for scale, no target",
    )
