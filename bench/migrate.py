"""Issue 14: live migration with local storage against virsh, and placement over 200 hosts.

A two-host lab (kvmgr.host.lab, its own namespaces and daemons) runs one demo guest (TCG, 256 MiB)
whose disk is a 2 GiB raw volume holding 512 MiB of random data.  The guest moves back and forth:
``kvmgr vm migrate NAME --to HOST`` (registry hosts over qemu+tls) one way, ``virsh migrate --live
--persistent --undefinesource --copy-storage-all`` the other way, interleaved, both with the
destination's address as migration and disk URI.  Figures: total wall time of the command, the
downtime libvirt's completed-job statistics report on the destination, and bytes moved (disk and
memory) as the same statistics count them.

Placement: 200 test:/// driver files (100 VMs each) kept open as a worker keeps its hosts; one
figure is gathering every host's load in parallel plus the decision, one the decision alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.core import BenchError, Context, Line, Result, Skip, Target, interleaved, run_command
from bench.driverfile import NAME_PREFIX, write_driver_file

NAME = f"{NAME_PREFIX}mig"
TIME_TARGET = Target("<=1.1x virsh", max_ratio=1.1)
DOWNTIME_TARGET = Target("<= virsh", max_ratio=1.0)
PLACEMENT_TARGET = Target("<100 ms", max_value=0.1)
DISK_BYTES = 2 * 1024**3
DATA_BYTES = 512 * 1024**2


def run(ctx: Context) -> Iterator[Line]:
    yield from _placement(ctx)
    if ctx.quick:
        yield Skip("migrate", "quick mode: no guest boots (run without --quick)")
        return
    if os.geteuid() != 0:
        yield Skip("migrate", "the lab needs root")
        return
    yield from _live(ctx)


# ------------------------------------------------------------------------------ live migration
def _live(ctx: Context) -> Iterator[Line]:
    from kvmgr.host import lab as labs

    ctx.say("building a two-host lab")
    lab = labs.up(2, owner_pid=os.getpid())
    try:
        yield from _measure(ctx, lab)
    finally:
        labs.down(lab.name)


def _measure(ctx: Context, lab: Any) -> Iterator[Line]:
    from tests.integration.conftest import DEMO_ISO_CACHE
    from tests.integration.guest import GuestShell, demo_domain

    from kvmgr.connect import open_connection
    from kvmgr.services import storage

    os.environ["KVMGR_DOMAIN_TYPE"] = "qemu"  # the lab hosts report KVM, which hangs here
    h1, h2 = lab.hosts
    uris = {h.name: lab.tls_uri(h) for h in lab.hosts}
    for host in lab.hosts:
        run_command([ctx.kvmgr, "host", "add", host.name, uris[host.name]])
    src = open_connection(uris[h1.name])
    ref = storage.create_volume(src, "default", f"{NAME}.img", DISK_BYTES, "raw")
    _fill(src, ref.path)
    if not DEMO_ISO_CACHE.exists():
        raise BenchError(f"{DEMO_ISO_CACHE} is missing: run the integration tests once")
    domain = demo_domain(src, NAME, str(DEMO_ISO_CACHE))
    src.virconn.defineXML(domain.to_xml().replace("</devices>", _disk_xml(ref.path)))
    src.virconn.lookupByName(NAME).create()
    with GuestShell.open(src, NAME) as shell:
        shell.wait_ready()
    src.close()
    where = [h1]  # the guest's current host
    downtime: dict[str, list[float]] = {"kvmgr": [], "virsh": []}
    moved: dict[str, list[float]] = {"kvmgr": [], "virsh": []}

    def other(host: Any) -> Any:
        return h2 if host is h1 else h1

    def kvmgr_move() -> float:
        source, target = where[0], other(where[0])
        began = time.perf_counter()
        out = run_command([ctx.kvmgr, "--host", source.name, "vm", "migrate", NAME, "--to",
                           target.name, "-o", "json"], timeout=900)  # fmt: skip
        seconds = time.perf_counter() - began
        where[0] = target
        result = json.loads(out)["result"]
        downtime["kvmgr"].append(float(result["downtime_ms"] or 0))
        moved["kvmgr"].append(float(result["memory_sent"] or 0))
        return seconds

    def virsh_move() -> float:
        source, target = where[0], other(where[0])
        address = f"tcp://{target.address}"
        began = time.perf_counter()
        run_command(["virsh", "-c", uris[source.name], "migrate", "--live", "--persistent",
                     "--undefinesource", "--copy-storage-all", "--migrateuri", address,
                     "--disks-uri", address, NAME, uris[target.name]], timeout=900)  # fmt: skip
        seconds = time.perf_counter() - began
        where[0] = target
        _delete_leftover(uris[source.name])  # virsh leaves the source's disk; kvmgr removes it
        info = run_command(["virsh", "-c", uris[target.name], "domjobinfo", NAME, "--completed",
                            "--keep-completed"])  # fmt: skip
        match = re.search(r"Total downtime:\s+(\d+)\s*ms", info)
        downtime["virsh"].append(float(match[1]) if match else 0.0)
        moved["virsh"].append(_bytes_moved(uris[target.name]))
        return seconds

    ctx.say("kvmgr vm migrate and virsh migrate, interleaved (2 GiB disk, 512 MiB data)")
    times = interleaved({"kvmgr": kvmgr_move, "virsh": virsh_move}, ctx.reps(1, 3), warmup=0)
    note = (
        "TCG guest, 256 MiB; 2 GiB raw disk, 512 MiB data; over qemu+tls; kvmgr's time includes "
        "removing the source's disk, which virsh leaves behind"
    )
    yield Result("migrate", "live, local disk", "s", "kvmgr vm migrate --to HOST", times["kvmgr"],
                 "virsh migrate --live --persistent --undefinesource --copy-storage-all",
                 times["virsh"], target=TIME_TARGET, note=note)  # fmt: skip
    yield Result("migrate", "downtime (libvirt job stats)", "ms", "kvmgr", downtime["kvmgr"],
                 "virsh", downtime["virsh"], target=DOWNTIME_TARGET)  # fmt: skip
    yield Result("migrate", "memory sent", "B", "kvmgr", moved["kvmgr"], "virsh", moved["virsh"],
                 note="job stats memory_processed; both copy the same 512 MiB")  # fmt: skip


def _disk_xml(path: str) -> str:
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='{path}'/><target dev='vda' bus='virtio'/></disk></devices>"
    )


def _fill(conn: Any, path: str) -> None:
    """Write DATA_BYTES of random data at the start of the volume, through a libvirt stream."""
    vol = conn.virconn.storageVolLookupByPath(path)
    stream = conn.virconn.newStream(0)
    vol.upload(stream, 0, DATA_BYTES, 0)
    chunk = 4 * 1024**2
    with Path("/dev/urandom").open("rb") as random:
        for _ in range(DATA_BYTES // chunk):
            data = random.read(chunk)
            view = memoryview(data)
            while view:
                view = view[stream.send(view.tobytes()) :]
    stream.finish()


def _delete_leftover(uri: str) -> None:
    import libvirt

    conn = libvirt.open(uri)
    try:
        pool = conn.storagePoolLookupByName("default")
        pool.refresh(0)
        pool.storageVolLookupByName(f"{NAME}.img").delete(0)
    finally:
        conn.close()


def _bytes_moved(uri: str) -> float:
    import libvirt

    conn = libvirt.open(uri)
    try:
        stats = conn.lookupByName(NAME).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    finally:
        conn.close()
    return float(stats.get("memory_processed", 0))


# ------------------------------------------------------------------------------ placement
def _placement(ctx: Context) -> Iterator[Line]:
    from kvmgr.connect import open_connection
    from kvmgr.connect.bounded import fan_out
    from kvmgr.control.placement import HostView, Need, choose
    from kvmgr.services.placement import host_load

    count = 200
    ctx.say(f"{count} test:/// hosts with 100 VMs each")
    connections = []
    for index in range(count):
        path = ctx.workdir / f"place-{index}.xml"
        connections.append(open_connection(write_driver_file(path, 100)))
    try:
        need = Need("new-vm", memory=512 * 1024**2, vcpus=1)

        def views() -> list[HostView]:
            outcomes = fan_out(connections, host_load, 10.0)
            return [
                HostView(
                    f"h{i}",
                    {},
                    False,
                    None,
                    o.value.cpus,
                    o.value.memory_total,
                    o.value.memory_available,
                    o.value.vcpus_running,
                )
                if o.ok and o.value is not None
                else HostView(f"h{i}", error=str(o.error))
                for i, o in enumerate(outcomes)
            ]

        gathered = views()

        def whole() -> float:
            began = time.perf_counter()
            choose(views(), need)
            return time.perf_counter() - began

        def decision() -> float:
            began = time.perf_counter()
            choose(gathered, need)
            return time.perf_counter() - began

        figures = interleaved({"whole": whole, "decision": decision}, ctx.reps(5, 20))
        yield Result("placement", f"{count} hosts: loads gathered + decision", "s",
                     "control.placement gather (parallel) + choose", figures["whole"],
                     note="test:/// files, 100 VMs each; mostly the bulk stats")  # fmt: skip
        yield Result("placement", f"{count} hosts: decision alone", "s", "control.placement.choose",
                     figures["decision"], target=PLACEMENT_TARGET)  # fmt: skip
    finally:
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()
