"""A host's memory, one meaning per word, from the one source that is right on every host.

libvirt's node info (``getInfo``) and ``getFreeMemory`` report one NUMA node on some multi-node
hosts (8.3 GiB of a 23.5 GiB machine here), so a VM that fits was refused and placement would
decide on a third of the host.  The node memory stats over all cells are the machine's:

- **total**: the RAM the kernel manages;
- **free**: RAM nobody uses, not even the page cache;
- **available**: free plus buffers and page cache, which the kernel gives back on demand: what a
  new VM can have without pushing others into swap.  Placement and ``vm create`` decide by it.

The test driver has no stats: its node info is all there is.
"""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import libvirt_errors
from kvmgr.units import KIB, MIB


@dataclass(frozen=True)
class NodeMemory:
    total: int  # bytes
    free: int
    available: int

    def as_dict(self) -> dict[str, int]:
        return {
            "memory_total": self.total,
            "memory_free": self.free,
            "memory_available": self.available,
        }


def node_memory(conn: Connection) -> NodeMemory:
    """The host's memory in bytes (see the module docstring for the words)."""
    try:
        stats = conn.virconn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
    except libvirt.libvirtError:
        stats = {}
    if "total" in stats and "free" in stats:
        free = int(stats["free"]) * KIB
        cache = (int(stats.get("buffers", 0)) + int(stats.get("cached", 0))) * KIB
        return NodeMemory(int(stats["total"]) * KIB, free, free + cache)
    with libvirt_errors("reading the host's memory"):
        total = int(conn.virconn.getInfo()[1]) * MIB
        free = int(conn.virconn.getFreeMemory())
    return NodeMemory(total, free, free)
