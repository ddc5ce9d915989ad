"""Issue 8.3: provisioning (define the VM and create its disk, no boot) at concurrency 1, 2, 4.

Three commands, each run once per VM as its own process, on the real daemon:

* ``kvmgr vm create NAME --no-start --disk size=1G ...``;
* ``virt-install ... --import --print-xml`` then ``virsh define``: virt-install has no flag that
  defines without starting a VM that has no install phase (``--import``, ``--noreboot`` and
  ``--install no_install=yes`` all boot it), and ``--print-xml`` is documented to still create the
  storage.  So the pair does exactly define + create disk, and pays one extra process start;
* ``bench/raw_provision.py``: ``qemu-img create`` + ``defineXML`` from libvirt-python.

All get 256 MiB, 1 vCPU, a 1 GiB qcow2 disk in /var/lib/libvirt/images and a NIC on the
``default`` network.  A figure is the wall time until all of a batch of ``c`` VMs exist.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt

from bench import cleanup
from bench.core import (
    REPO,
    BenchError,
    Context,
    Line,
    Result,
    Skip,
    Target,
    interleaved,
    run_command,
    timed,
)
from bench.driverfile import NAME_PREFIX

PREFIX = f"{NAME_PREFIX}prov-"
IMAGES = "/var/lib/libvirt/images"
NOT_SLOWER = Target("<=1.0x virt-install", max_ratio=1.0)
CONCURRENCY = (1, 2, 4)

Provisioner = Callable[[Context, str], None]


def kvmgr_create(ctx: Context, name: str) -> None:
    run_command(
        [
            *(ctx.kvmgr, "-c", ctx.system_uri, "vm", "create", name, "--no-start"),
            *("--os", "generic", "--memory", "256M", "--vcpus", "1"),
            *("--disk", "size=1G,format=qcow2", "--network", "default"),
            *("--graphics", "none", "-o", "json"),
        ]
    )


def virt_install_create(ctx: Context, name: str) -> None:
    xml = run_command(
        [
            *("virt-install", "--connect", ctx.system_uri, "--name", name),
            *("--memory", "256", "--vcpus", "1", "--import", "--os-variant", "generic"),
            *("--disk", "size=1,format=qcow2", "--network", "network=default"),
            *("--graphics", "none", "--print-xml"),
        ]
    )
    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix=PREFIX) as handle:
        handle.write(xml)
        handle.flush()
        run_command(["virsh", "-c", ctx.system_uri, "define", handle.name])


def raw_create(ctx: Context, name: str) -> None:
    disk = f"{IMAGES}/{name}.qcow2"
    run_command(
        [ctx.python, str(REPO / "bench/raw_provision.py"), ctx.system_uri, name, disk, "qemu"]
    )


PROVISIONERS: dict[str, Provisioner] = {
    "kvmgr": kvmgr_create,
    "virt-install": virt_install_create,
    "raw": raw_create,
}


def run(ctx: Context) -> Iterator[Line]:
    conn = libvirt.open(ctx.system_uri)
    serial = itertools.count()
    try:
        _clean(conn)
        for concurrency in CONCURRENCY:
            ctx.say(f"provisioning at concurrency {concurrency}")
            failures: dict[str, list[str]] = {subject: [] for subject in PROVISIONERS}
            measured = interleaved(
                {
                    subject: _batch(ctx, conn, subject, concurrency, serial, failures[subject])
                    for subject in PROVISIONERS
                },
                ctx.reps(3, 5),
            )
            yield from _lines(concurrency, measured, failures)
    finally:
        _clean(conn)
        conn.close()


def _lines(
    concurrency: int, measured: dict[str, list[float]], failures: dict[str, list[str]]
) -> Iterator[Line]:
    """A failed batch is left out of the figures and counted in the note (or skips the line)."""
    ok = {subject: [v for v in values if not math.isnan(v)] for subject, values in measured.items()}
    case = f"define+disk, {concurrency} at once"
    for baseline, label, target in (
        ("virt-install", "virt-install --print-xml + virsh define", NOT_SLOWER),
        ("raw", "qemu-img + defineXML script", None),
    ):
        notes = [
            f"{subject} failed {len(failures[subject])}/{len(measured[subject])} batches: "
            f"{failures[subject][0]}"
            for subject in ("kvmgr", baseline)
            if failures[subject]
        ]
        if not ok["kvmgr"] or not ok[baseline]:
            yield Skip("provision", f"{case} vs {baseline}: " + "; ".join(notes))
            continue
        yield Result(
            "provision",
            case,
            "s",
            "kvmgr vm create --no-start",
            ok["kvmgr"],
            label,
            ok[baseline],
            target,
            note="; ".join(notes),
        )


def _batch(
    ctx: Context,
    conn: libvirt.virConnect,
    subject: str,
    concurrency: int,
    serial: Iterator[int],
    failures: list[str],
) -> Callable[[], float]:
    """One measurement: ``concurrency`` VMs made at once; they are removed after the clock.

    A batch in which a command failed measures NaN and its error goes to ``failures``.
    """
    provision = PROVISIONERS[subject]

    def measure() -> float:
        names = [f"{PREFIX}{subject}-{next(serial)}" for _ in range(concurrency)]
        try:
            with ThreadPoolExecutor(concurrency) as pool:
                seconds = timed(lambda: list(pool.map(lambda n: provision(ctx, n), names)))()
            _check_defined(conn, names)
            return seconds
        except BenchError as err:
            failures.append(str(err))
            return math.nan
        finally:
            for name in names:
                cleanup.remove_domain(conn, name, disks_under=[IMAGES])

    return measure


def _check_defined(conn: libvirt.virConnect, names: list[str]) -> None:
    for name in names:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError as err:
            raise BenchError(f"{name} was not defined") from err
        if dom.isActive():
            raise BenchError(f"{name} was started; provisioning must not boot")
        path = cleanup.disk_paths(dom)[0]
        if not Path(path).exists():
            raise BenchError(f"{name}'s disk {path} was not created")


def _clean(conn: libvirt.virConnect) -> None:
    cleanup.sweep(conn, PREFIX, disks_under=[IMAGES])
    cleanup.sweep_files(conn, IMAGES, PREFIX)
