"""Cutting a multi-step operation right after its n-th journal record, and recovering it as a
process that never saw it would (shared by the unit and integration journal tests)."""

from __future__ import annotations

import json
import re
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.services import vms
from kvmgr.services.steps import LocalSteps, Record, run_recovery


class Cut(Exception):
    """Raised right after the n-th journal record: the process 'dies' there."""


class CutSteps(LocalSteps):
    def __init__(self, cut_at: int | None = None) -> None:
        super().__init__()
        self.cut_at = cut_at
        self.count = 0
        self.names: list[str] = []

    def undo_with(self, action: str, /, **args: Any) -> None:
        super().undo_with(action, **args)
        self._tick(action)

    def finish_with(self, action: str, /, **args: Any) -> None:
        super().finish_with(action, **args)
        self._tick(action)

    def _tick(self, action: str) -> None:
        self.count += 1
        self.names.append(action)
        if self.count == self.cut_at:
            raise Cut(action)


def recover_elsewhere(conn: Connection, journal: LocalSteps) -> list[str]:
    """Run the records as another process would: from their JSON, by action name."""

    def copy(records: list[Record]) -> list[Record]:
        return [Record(r.action, json.loads(json.dumps(r.args))) for r in records]

    return run_recovery(conn, copy(journal.undo), copy(journal.finish))


def libvirt_state(conn: Connection, prefix: str) -> dict[str, Any]:
    """VMs named ``prefix*`` (snapshots, owned volumes, disks) and volumes so named, by name."""
    domains = {}
    for dom in conn.virconn.listAllDomains(0):
        if not dom.name().startswith(prefix):
            continue
        spec = vms.definition(dom, inactive=True)
        meta = spec.kvmgr_metadata()
        domains[dom.name()] = {
            "snapshots": sorted(dom.snapshotListNames(0)),
            "owned": sorted(meta.owned_volumes) if meta else [],
            "disks": sorted(d.source_path or "" for d in spec.devices.disks),
        }
    volumes = set()
    for pool in conn.virconn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        pool.refresh(0)
        volumes |= {f"{pool.name()}/{n}" for n in pool.listVolumes() if n.startswith(prefix)}
    found = {"domains": domains, "volumes": sorted(volumes)}
    # an overlay whose name was taken gets a random suffix: compare it as a suffix
    return json.loads(re.sub(r"-[0-9a-f]{6}\.qcow2", "-RANDOM.qcow2", json.dumps(found)))
