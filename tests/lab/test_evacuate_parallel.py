"""``kvmgr host evacuate --parallel 2`` in the lab: three running demo guests leave host 1 two
at a time (the first two moves overlap in time, the third waits for a free slot), all arrive
running, and host 1 ends empty and in maintenance."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.host import lab as labs
from kvmgr.services import storage
from kvmgr.units import MIB
from tests.integration.guest import demo_domain
from tests.lab.test_migration import POOL, _volumes
from tests.lab.test_moves import PREFIX, clean, kvmgr  # noqa: F401  (clean: the fixture)


@pytest.mark.usefixtures("clean")
def test_evacuation_moves_two_at_a_time_and_leaves_the_host_empty_in_maintenance(
    lab: labs.Lab, lab_tls: list[Connection], demo_iso: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    for host in lab.hosts[:3]:
        added = kvmgr(state, "host", "add", f"h{host.index}", lab.tls_uri(host))
        assert added.returncode == 0, added.stderr
    src = lab_tls[0]
    names = [f"{PREFIX}par{i}" for i in range(3)]
    for name in names:
        ref = storage.create_volume(src, POOL, f"{name}.qcow2", 32 * MIB, "qcow2")
        domain = demo_domain(src, name, str(demo_iso), disk_path=ref.path, memory=160 * MIB)
        src.virconn.defineXML(domain.to_xml())
        src.virconn.lookupByName(name).create()

    dry = kvmgr(state, "host", "evacuate", "h1", "--parallel", "2", "--dry-run", "-o", "json")
    assert dry.returncode == 0, dry.stderr
    assert sorted(o["vm"] for o in json.loads(dry.stdout)["outcomes"]) == names
    assert all(src.virconn.lookupByName(name).isActive() for name in names)  # nothing moved

    ran = kvmgr(state, "host", "evacuate", "h1", "--parallel", "2", "-o", "json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    report = json.loads(ran.stdout)
    assert report["parallel"] == 2 and report["empty"] and report["maintenance"]
    assert sorted(report["moved"]) == names and not report["failed"]
    spans = [
        (datetime.fromisoformat(o["started"]), datetime.fromisoformat(o["finished"]))
        for o in report["outcomes"]
    ]
    first, second, third = spans
    assert second[0] < first[1] and first[0] < second[1], spans  # the first two overlapped
    assert third[0] >= min(first[1], second[1]), spans  # the third waited for a free slot
    print("move spans (s from the first start):",
          [(round((a - first[0]).total_seconds(), 1), round((b - first[0]).total_seconds(), 1))
           for a, b in spans])  # fmt: skip
    assert all(o["result"]["mode"] == "live" for o in report["outcomes"])

    for outcome in report["outcomes"]:
        dst = lab_tls[int(outcome["to"][1:]) - 1]
        assert dst.virconn.lookupByName(outcome["vm"]).isActive()  # arrived, running
    assert not [d.name() for d in src.virconn.listAllDomains(0)]  # host 1 is empty
    assert not {f"{name}.qcow2" for name in names} & _volumes(src)
    hosts = json.loads(kvmgr(state, "host", "list", "-o", "json").stdout)
    assert {h["name"]: h["maintenance"] for h in hosts}["h1"] is True
    with pytest.raises(libvirt.libvirtError):
        src.virconn.lookupByName(names[0])
