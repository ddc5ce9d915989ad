"""Placement decisions (kvmgr.control.placement.decide/choose/plan_many), pure: no hosts needed."""

from __future__ import annotations

import pytest

from kvmgr.control.placement import HostView, Need, choose, decide, plan_many
from kvmgr.errors import InvalidState
from kvmgr.units import GIB, MIB


def host(name: str, free_gib: float = 8, **kw: object) -> HostView:
    return HostView(name, memory_total=16 * GIB, memory_available=int(free_gib * GIB), cpus=4,
                    **kw)  # type: ignore[arg-type]  # fmt: skip


def test_every_reason_to_skip_a_host_is_given() -> None:
    hosts = [
        host("src"),
        host("maint", maintenance=True),
        host("down", error="no answer within 8 s"),
        host("small", free_gib=0.25),
        host("zone-a", labels={"zone": "a"}),
        host("nolabel"),
        host("member", labels={"zone": "b"}, groups={"web": ("web1",)}),
        host("ok", labels={"zone": "b"}),
    ]
    need = Need("web2", memory=512 * MIB, require={"zone": "b"}, group="web",
                anti_affinity=True, avoid=frozenset({"src"}))  # fmt: skip
    verdicts = {v.host: v for v in decide(hosts, need)}
    assert verdicts["src"].reason == "the VM is there now"
    assert verdicts["maint"].reason == "in maintenance"
    assert verdicts["down"].reason == "unreachable: no answer within 8 s"
    assert verdicts["zone-a"].reason == "needs label zone=b, has zone=a"
    assert verdicts["nolabel"].reason == "needs label zone=b, has none"
    assert verdicts["member"].reason == "anti-affinity group web: web1 is there"
    assert verdicts["small"].reason.startswith("needs label")  # labels are checked before memory
    assert [v.host for v in decide(hosts, need) if v.eligible] == ["ok"]
    assert choose(hosts, need)[0] == "ok"


def test_memory_and_cpu_rank_the_hosts_and_affinity_attracts() -> None:
    busy = HostView("busy", memory_total=16 * GIB, memory_available=8 * GIB, cpus=4,
                    vcpus_running=12)  # fmt: skip
    hosts = [host("roomy", free_gib=12), host("tight", free_gib=2), busy]
    need = Need("vm", memory=1 * GIB)
    assert [v.host for v in decide(hosts, need)] == ["roomy", "tight", "busy"]
    hosts.append(host("friend", free_gib=2, groups={"g": ("peer",)}))
    assert choose(hosts, Need("vm", memory=1 * GIB, group="g"))[0] == "friend"
    small = Need("vm", memory=64 * GIB)
    with pytest.raises(InvalidState, match=r"no host can take VM vm: .*needs 65536 MiB"):
        choose(hosts, small)


def test_plan_many_sees_its_own_earlier_choices_and_is_all_or_nothing() -> None:
    hosts = [host("a"), host("b")]
    needs = [Need(f"vm{i}", memory=1 * GIB, group="g", anti_affinity=True) for i in range(2)]
    plan = plan_many(hosts, needs)
    assert sorted(to for _need, to, _v in plan) == ["a", "b"]  # one member per host
    three = [*needs, Need("vm2", memory=1 * GIB, group="g", anti_affinity=True)]
    with pytest.raises(InvalidState, match=r"no host can take VM vm2: .*anti-affinity group g"):
        plan_many(hosts, three)
    # Memory taken by an earlier choice counts for the next one.
    fat = [Need(f"big{i}", memory=6 * GIB) for i in range(2)]
    assert sorted(to for _n, to, _v in plan_many(hosts, fat)) == ["a", "b"]


def test_rebalance_evens_committed_memory_and_keeps_anti_affinity() -> None:
    from kvmgr.control.placement import plan_rebalance

    hosts = [host("a", free_gib=12), host("b", free_gib=12), host("c", free_gib=12)]
    vms = {
        "a": [Need(f"a{i}", memory=2 * GIB) for i in range(4)],  # 8 GiB of 16 on a
        "b": [Need("b0", memory=2 * GIB)],
        "c": [],
    }
    moves = plan_rebalance(hosts, vms, threshold=0.15)
    assert [(m.source, m.target) for m in moves] == [("a", "c"), ("a", "b")]
    # Afterwards a, b, c hold 4, 4 and 2 GiB: within 0.15 of 16 GiB (2.4 GiB) of each other.
    assert plan_rebalance(hosts, vms, threshold=0.6) == []  # already within the threshold
    group = {
        "a": [Need(f"db{i}", memory=2 * GIB, group="db", anti_affinity=True) for i in range(2)],
        "b": [Need("db2", memory=2 * GIB, group="db", anti_affinity=True)],
    }
    # The only host with room for a db VM already has one: no move, though a is fuller.
    assert plan_rebalance(hosts[:2], group, threshold=0.05) == []
