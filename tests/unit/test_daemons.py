"""The decisions of ``kvmgr host daemons``: what start and stop do on hosts in various states."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kvmgr.errors import InvalidInput
from kvmgr.host import daemons
from kvmgr.host.daemons import Action, HostFacts, Record, RunningDaemon, plan_start, plan_stop

LIBVIRTD = RunningDaemon("libvirtd", 200, "kvmgr", 5000)
VIRTLOGD = RunningDaemon("virtlogd", 100, None, 4000)


def actions(steps: list[daemons.Step]) -> list[Action]:
    return [step.action for step in steps]


def test_nothing_to_do_when_a_daemon_answers() -> None:
    facts = HostFacts(daemon_answers=True, systemd=False, netns_exists=False)
    assert actions(plan_start(facts, "kvmgr")) == [Action.NOTHING]


def test_answering_daemon_wins_even_on_systemd_host() -> None:
    facts = HostFacts(daemon_answers=True, systemd=True, netns_exists=False)
    assert actions(plan_start(facts, "kvmgr")) == [Action.NOTHING]


def test_systemd_host_uses_systemctl_for_monolithic_daemons() -> None:
    facts = HostFacts(daemon_answers=False, systemd=True, netns_exists=False)
    steps = plan_start(facts, "kvmgr")
    assert actions(steps) == [
        Action.SYSTEMCTL_START,
        Action.WAIT_FOR_SOCKET,
        Action.ENSURE_DEFAULT_NETWORK,
    ]
    assert steps[0].target == "virtlogd libvirtd"


def test_systemd_host_with_modular_daemons_starts_virtqemud() -> None:
    facts = HostFacts(daemon_answers=False, systemd=True, netns_exists=True, modular_units=True)
    assert "virtqemud" in plan_start(facts, "kvmgr")[0].target.split()


def test_bare_host_gets_namespace_virtlogd_libvirtd_and_network() -> None:
    facts = HostFacts(daemon_answers=False, systemd=False, netns_exists=False)
    steps = plan_start(facts, "lab")
    assert actions(steps) == [
        Action.CREATE_NETNS,
        Action.START_VIRTLOGD,
        Action.START_LIBVIRTD,
        Action.WAIT_FOR_SOCKET,
        Action.ENSURE_DEFAULT_NETWORK,
    ]
    assert steps[0].target == "lab"
    assert steps[2].target == "lab"


def test_existing_namespace_and_virtlogd_are_reused() -> None:
    facts = HostFacts(
        daemon_answers=False,
        systemd=False,
        netns_exists=True,
        running=(VIRTLOGD,),
        pidfiles={"/run/virtlogd.pid": 100},
    )
    assert actions(plan_start(facts, "kvmgr")) == [
        Action.START_LIBVIRTD,
        Action.WAIT_FOR_SOCKET,
        Action.ENSURE_DEFAULT_NETWORK,
    ]


def test_daemons_of_lab_hosts_in_other_namespaces_do_not_count() -> None:
    # A lab's hosts run libvirtd and virtlogd in namespaces (and mounts) of their own: none of
    # them answers on this host's socket, so this host's daemons are started all the same.
    lab = (
        RunningDaemon("libvirtd", 300, "kvl0-h1", 6000),
        RunningDaemon("virtlogd", 301, "kvl0-h1", 6001),
    )
    facts = HostFacts(daemon_answers=False, systemd=False, netns_exists=True, running=lab)
    assert actions(plan_start(facts, "kvmgr")) == [
        Action.START_VIRTLOGD,
        Action.START_LIBVIRTD,
        Action.WAIT_FOR_SOCKET,
        Action.ENSURE_DEFAULT_NETWORK,
    ]
    hung = HostFacts(
        daemon_answers=False, systemd=False, netns_exists=True, running=(*lab, LIBVIRTD, VIRTLOGD)
    )
    assert actions(plan_start(hung, "kvmgr")) == [
        Action.WAIT_FOR_SOCKET,
        Action.ENSURE_DEFAULT_NETWORK,
    ]


def test_stale_pidfiles_after_a_crash_are_removed_first() -> None:
    # libvirtd crashed: its pid file names a pid that now belongs to nobody (or another program).
    facts = HostFacts(
        daemon_answers=False,
        systemd=False,
        netns_exists=True,
        running=(VIRTLOGD,),
        pidfiles={"/run/libvirtd.pid": 200, "/run/virtlogd.pid": 100},
    )
    steps = plan_start(facts, "kvmgr")
    assert steps[0] == daemons.Step(
        Action.REMOVE_STALE_PIDFILE, "/run/libvirtd.pid", "no process holds pid 200"
    )
    assert Action.START_LIBVIRTD in actions(steps)
    assert "/run/virtlogd.pid" not in [s.target for s in steps]


def test_pidfile_naming_another_program_is_stale() -> None:
    # After a reboot pid 100 may be some unrelated process; the pid file is still stale.
    facts = HostFacts(
        daemon_answers=False,
        systemd=False,
        netns_exists=True,
        running=(RunningDaemon("libvirtd", 100, "kvmgr", 1),),
        pidfiles={"/run/virtlogd.pid": 100, "/run/libvirtd.pid": None},
    )
    removed = [
        s.target for s in plan_start(facts, "kvmgr") if s.action is Action.REMOVE_STALE_PIDFILE
    ]
    assert removed == ["/run/libvirtd.pid", "/run/virtlogd.pid"]


def test_running_but_silent_libvirtd_is_waited_for_not_started_twice() -> None:
    facts = HostFacts(
        daemon_answers=False,
        systemd=False,
        netns_exists=True,
        running=(LIBVIRTD, VIRTLOGD),
        pidfiles={"/run/libvirtd.pid": 200, "/run/virtlogd.pid": 100},
    )
    assert actions(plan_start(facts, "kvmgr")) == [
        Action.WAIT_FOR_SOCKET,
        Action.ENSURE_DEFAULT_NETWORK,
    ]


def test_stop_stops_only_recorded_daemons_libvirtd_first() -> None:
    records = [Record("virtlogd", 100, 4000, None), Record("libvirtd", 200, 5000, "kvmgr")]
    someone_elses = RunningDaemon("libvirtd", 300, None, 6000)
    steps = plan_stop(records, [VIRTLOGD, LIBVIRTD, someone_elses])
    assert [(s.action, s.target, s.reason) for s in steps] == [
        (Action.STOP_DAEMON, "libvirtd", "200"),
        (Action.STOP_DAEMON, "virtlogd", "100"),
    ]


def test_stop_forgets_a_recorded_pid_now_used_by_another_process() -> None:
    # Same pid, different start time: the daemon kvmgr started is gone and the pid was reused.
    records = [Record("libvirtd", 200, 1234, "kvmgr")]
    assert actions(plan_stop(records, [LIBVIRTD])) == [Action.FORGET_DAEMON]


def test_stop_with_no_records_does_nothing() -> None:
    assert plan_stop([], [LIBVIRTD, VIRTLOGD]) == []


def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "kvmgr" / "daemons.json"
    records = [Record("libvirtd", 200, 5000, "kvmgr")]
    daemons.save_records(records, path)
    assert daemons.load_records(path) == records
    assert json.loads(path.read_text())[0]["netns"] == "kvmgr"


def test_unreadable_records_mean_none(tmp_path: Path) -> None:
    path = tmp_path / "daemons.json"
    path.write_text("{not json")
    assert daemons.load_records(path) == []
    assert daemons.load_records(tmp_path / "missing.json") == []


def test_running_daemons_reads_this_process_from_proc(tmp_path: Path) -> None:
    """The /proc scan finds a process by name, with its start time and netns by inode."""
    proc = tmp_path / "proc"
    entry = proc / "4242"
    (entry / "ns").mkdir(parents=True)
    (entry / "comm").write_text("libvirtd\n")
    real_stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    (entry / "stat").write_text(real_stat.replace(f"{os.getpid()} (", "4242 (lib virt) ", 1))
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    (netns_dir / "lab").write_text("")
    (entry / "ns" / "net").symlink_to(netns_dir / "lab")
    (proc / "self").mkdir()
    (proc / "77").mkdir()
    (proc / "77" / "comm").write_text("bash\n")

    found = daemons.running_daemons(proc, netns_dir)

    expected_start = int(real_stat.rsplit(")", 1)[1].split()[19])
    assert found == [RunningDaemon("libvirtd", 4242, "lab", expected_start)]


def test_namespace_name_must_be_a_plain_name() -> None:
    with pytest.raises(InvalidInput):
        daemons.start("../../etc")
