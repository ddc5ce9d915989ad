"""libvirt's daemons on hosts with and without systemd.

On a systemd host ``systemctl`` starts libvirtd and virtlogd.  Containers and minimal hosts have no
init system, so kvmgr starts the daemons itself: ``virtlogd -d``, then ``libvirtd -d`` inside a
network namespace (so the NAT network's bridge and firewall rules stay out of the host's own
namespace), waits until the socket answers and makes sure the ``default`` network runs.

The decisions are pure (:func:`plan_start`, :func:`plan_stop`) over facts gathered from /proc, so
they are tested without starting anything; :func:`start` and :func:`stop` only carry plans out.
``stop`` stops only what ``start`` recorded in /run/kvmgr/daemons.json, never a daemon someone
else started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import libvirt

from kvmgr.connect import open_connection
from kvmgr.connect.connection import libvirt_version
from kvmgr.errors import ConnectionFailed, HostError, libvirt_errors
from kvmgr.names import validate_name

SYSTEM_URI = "qemu:///system"
DEFAULT_NETNS = "kvmgr"
DEFAULT_NETWORK = "default"
LIBVIRTD_LOG = "/var/log/libvirt/libvirtd.log"
STATE_FILE = Path("/run/kvmgr/daemons.json")
NETNS_DIR = Path("/run/netns")
PROC = Path("/proc")

#: Daemons kvmgr knows, with the pid file each writes when started with ``-d`` as root.
PID_FILES: Mapping[str, str] = {
    "virtlogd": "/run/virtlogd.pid",
    "libvirtd": "/run/libvirtd.pid",
}
#: Modular daemons (libvirt's newer model); reported by ``status`` when they run.
MODULAR_DAEMONS = ("virtqemud", "virtnetworkd", "virtstoraged", "virtnodedevd")
#: systemd units per daemon model.  Debian 12 ships the monolithic libvirtd.
MONOLITHIC_UNITS = ("virtlogd", "libvirtd")
MODULAR_UNITS = ("virtlogd", "virtqemud", "virtnetworkd", "virtstoraged")


class Action(StrEnum):
    """One step of a start or stop plan."""

    NOTHING = "nothing"
    SYSTEMCTL_START = "systemctl-start"
    REMOVE_STALE_PIDFILE = "remove-stale-pidfile"
    CREATE_NETNS = "create-netns"
    START_VIRTLOGD = "start-virtlogd"
    START_LIBVIRTD = "start-libvirtd"
    WAIT_FOR_SOCKET = "wait-for-socket"
    ENSURE_DEFAULT_NETWORK = "ensure-default-network"
    STOP_DAEMON = "stop-daemon"
    FORGET_DAEMON = "forget-daemon"


@dataclass(frozen=True)
class Step:
    action: Action
    target: str = ""
    reason: str = ""


@dataclass(frozen=True)
class RunningDaemon:
    name: str
    pid: int
    netns: str | None  # None: the host's own namespace (or one kvmgr cannot name)
    start_time: int  # clock ticks since boot, /proc/PID/stat field 22; guards against pid reuse


@dataclass(frozen=True)
class HostFacts:
    """Everything the start decision depends on, gathered by :func:`gather_facts`."""

    daemon_answers: bool
    systemd: bool
    netns_exists: bool
    running: tuple[RunningDaemon, ...] = ()
    pidfiles: Mapping[str, int | None] = field(default_factory=dict)  # path -> pid in it
    modular_units: bool = False

    def is_running(self, name: str, netns: str | None = None) -> bool:
        """A daemon ``name`` runs in the host's namespace or in ``netns``.  One in another named
        namespace is a lab host's (with mounts of its own): it neither answers on this host's
        socket nor holds its pid file, so it must not stop this host's daemon from starting."""
        return any(daemon.name == name and daemon.netns in (None, netns) for daemon in self.running)

    def pid_alive(self, pid: int) -> bool:
        return any(daemon.pid == pid for daemon in self.running)


@dataclass(frozen=True)
class Record:
    """A daemon kvmgr started, as kept in :data:`STATE_FILE`."""

    name: str
    pid: int
    start_time: int
    netns: str | None


# ------------------------------------------------------------------------------ pure decisions
def plan_start(facts: HostFacts, netns: str) -> list[Step]:
    """What ``start`` has to do on a host described by ``facts``."""
    if facts.daemon_answers:
        return [Step(Action.NOTHING, SYSTEM_URI, "a libvirt daemon already answers")]
    if facts.systemd:
        units = MODULAR_UNITS if facts.modular_units else MONOLITHIC_UNITS
        return [
            Step(Action.SYSTEMCTL_START, " ".join(units), "systemd manages the daemons"),
            Step(Action.WAIT_FOR_SOCKET, SYSTEM_URI),
            Step(Action.ENSURE_DEFAULT_NETWORK, DEFAULT_NETWORK),
        ]
    steps = [
        Step(Action.REMOVE_STALE_PIDFILE, path, f"no process holds pid {pid}")
        for path, pid in sorted(facts.pidfiles.items())
        if not _held(facts, path, pid)
    ]
    if not facts.netns_exists:
        steps.append(Step(Action.CREATE_NETNS, netns, "libvirtd's networks live in it"))
    if not facts.is_running("virtlogd", netns):
        steps.append(Step(Action.START_VIRTLOGD, "virtlogd", "QEMU's logs go through it"))
    if facts.is_running("libvirtd", netns):
        # A libvirtd that runs but does not answer is hung or still starting: starting a second
        # one would fail on the pid file lock, so wait for this one instead.
        steps.append(Step(Action.WAIT_FOR_SOCKET, SYSTEM_URI, "libvirtd runs but does not answer"))
    else:
        steps.append(Step(Action.START_LIBVIRTD, netns))
        steps.append(Step(Action.WAIT_FOR_SOCKET, SYSTEM_URI))
    steps.append(Step(Action.ENSURE_DEFAULT_NETWORK, DEFAULT_NETWORK))
    return steps


def _held(facts: HostFacts, path: str, pid: int | None) -> bool:
    """A pid file is held when the process it names is the daemon it belongs to."""
    if pid is None:
        return False
    owner = next((name for name, file in PID_FILES.items() if file == path), None)
    return any(d.pid == pid and d.name == owner for d in facts.running)


def plan_stop(records: Iterable[Record], running: Iterable[RunningDaemon]) -> list[Step]:
    """Stop what kvmgr started and still runs as the same process; forget the rest.

    libvirtd goes first so it can close its guests' logs through virtlogd.
    """
    alive = {(d.pid, d.start_time, d.name) for d in running}
    order = {"libvirtd": 0, "virtlogd": 1}
    steps = []
    for record in sorted(records, key=lambda r: order.get(r.name, 2)):
        if (record.pid, record.start_time, record.name) in alive:
            steps.append(Step(Action.STOP_DAEMON, record.name, str(record.pid)))
        else:
            steps.append(Step(Action.FORGET_DAEMON, record.name, "no longer running"))
    return steps


# ------------------------------------------------------------------------------ facts from /proc
def _read_stat_start_time(pid: int, proc: Path = PROC) -> int | None:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it are plain.
    after_name = stat.rsplit(")", 1)[1].split()
    return int(after_name[19])  # field 22 overall: starttime


def _netns_inodes(netns_dir: Path = NETNS_DIR) -> dict[tuple[int, int], str]:
    names: dict[tuple[int, int], str] = {}
    with contextlib.suppress(OSError):
        for entry in netns_dir.iterdir():
            with contextlib.suppress(OSError):
                st = entry.stat()
                names[(st.st_dev, st.st_ino)] = entry.name
    return names


def _netns_of(pid: int, named: Mapping[tuple[int, int], str], proc: Path = PROC) -> str | None:
    try:
        st = (proc / str(pid) / "ns" / "net").stat()
    except OSError:
        return None
    return named.get((st.st_dev, st.st_ino))


def running_daemons(proc: Path = PROC, netns_dir: Path = NETNS_DIR) -> list[RunningDaemon]:
    """libvirt daemons running on this host, found by their process names in /proc."""
    wanted = {*PID_FILES, *MODULAR_DAEMONS}
    named = _netns_inodes(netns_dir)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue  # the process ended while we looked
        if comm not in wanted:
            continue
        pid = int(entry.name)
        start_time = _read_stat_start_time(pid, proc)
        if start_time is None:
            continue
        found.append(RunningDaemon(comm, pid, _netns_of(pid, named, proc), start_time))
    return sorted(found, key=lambda daemon: (daemon.name, daemon.pid))


def _read_pidfile(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


#: pid files of the daemon that runs libvirt's networks (monolithic, then modular)
NETWORK_DAEMON_PID_FILES = (
    "/run/libvirtd.pid",
    "/run/libvirt/virtnetworkd.pid",
    "/run/virtnetworkd.pid",
)


def daemon_netns(proc: Path = PROC, netns_dir: Path = NETNS_DIR) -> str | None:
    """The named network namespace this host's libvirt daemon (its networks, the bridges its
    guests plug into) runs in; None when it runs in the host's own namespace or none runs."""
    for path in NETWORK_DAEMON_PID_FILES:
        pid = _read_pidfile(path)
        if pid is not None and (proc / str(pid)).exists():
            return _netns_of(pid, _netns_inodes(netns_dir), proc)
    return None


def _pidfiles_present() -> dict[str, int | None]:
    return {path: _read_pidfile(path) for path in PID_FILES.values() if Path(path).exists()}


def is_systemd_host() -> bool:
    """PID 1 is systemd (the check ``sd_booted`` makes, plus the process name)."""
    try:
        init = (PROC / "1" / "comm").read_text().strip()
    except OSError:
        return False
    return init == "systemd" and Path("/run/systemd/system").is_dir()


def _modular_units_available() -> bool:
    units = Path("/usr/lib/systemd/system")
    return (units / "virtqemud.service").exists() and not (units / "libvirtd.service").exists()


def daemon_answers(uri: str = SYSTEM_URI) -> bool:
    """True when a libvirt daemon accepts a connection at ``uri``."""
    try:
        open_connection(uri, readonly=True).close()
    except ConnectionFailed:
        return False
    return True


def gather_facts(netns: str) -> HostFacts:
    return HostFacts(
        daemon_answers=daemon_answers(),
        systemd=is_systemd_host(),
        netns_exists=(NETNS_DIR / netns).exists(),
        running=tuple(running_daemons()),
        pidfiles=_pidfiles_present(),
        modular_units=_modular_units_available(),
    )


# ------------------------------------------------------------------------------ carrying out
@dataclass
class StartReport:
    netns: str
    steps: list[Step]
    version: str

    @property
    def did_nothing(self) -> bool:
        return [step.action for step in self.steps] == [Action.NOTHING]


def run_command(argv: list[str], doing: str) -> None:
    """Run a host tool; its failure becomes a HostError that quotes what it printed."""
    # stderr goes to a file, not a pipe: a daemon that forks may keep its copy of a pipe open
    # and make us wait for an end of file that never comes.
    with tempfile.TemporaryFile(mode="w+") as errors:
        try:
            subprocess.run(
                argv,
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=errors,
                stderr=errors,
                timeout=60,
            )
        except subprocess.CalledProcessError as err:
            errors.seek(0)
            detail = errors.read().strip() or f"exit status {err.returncode}"
            raise HostError(f"{doing} failed: {detail}") from err
        except FileNotFoundError as err:
            raise HostError(
                f"{doing} failed: {argv[0]} is not installed",
                hint="run scripts/install-system-deps.sh",
            ) from err
        except subprocess.TimeoutExpired as err:
            raise HostError(f"{doing} did not finish within {err.timeout:.0f} s") from err


def _wait_for_socket(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not daemon_answers():
        if time.monotonic() > deadline:
            raise HostError(
                f"libvirtd did not answer on {SYSTEM_URI} within {timeout:.0f} s",
                hint=f"read {LIBVIRTD_LOG} for why it did not start",
            )
        time.sleep(0.2)


def ensure_default_network(uri: str = SYSTEM_URI) -> str:
    """Start libvirt's ``default`` network and mark it autostart; say what was done."""
    with open_connection(uri) as conn, libvirt_errors("starting the default network"):
        try:
            net = conn.virconn.networkLookupByName(DEFAULT_NETWORK)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                return "no 'default' network is defined; skipped"
            raise
        done = []
        if not net.isActive():
            net.create()
            done.append("started")
        if not net.autostart():
            net.setAutostart(1)
            done.append("set to autostart")
    return ", ".join(done) or "already active"


def _record(name: str, netns: str | None) -> None:
    pid = _read_pidfile(PID_FILES[name])
    start_time = None if pid is None else _read_stat_start_time(pid)
    if pid is None or start_time is None:
        return  # nothing trustworthy to record: stop will then leave the daemon alone
    records = [r for r in load_records() if r.name != name]
    records.append(Record(name, pid, start_time, netns))
    save_records(records)


def load_records(path: Path = STATE_FILE) -> list[Record]:
    try:
        data = json.loads(path.read_text())
        return [Record(**item) for item in data]
    except (OSError, ValueError, TypeError):
        return []


def save_records(records: list[Record], path: Path = STATE_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(record) for record in records], indent=2))


def _carry_out(step: Step, netns: str, timeout: float) -> Step:
    if step.action is Action.SYSTEMCTL_START:
        run_command(["systemctl", "start", *step.target.split()], f"starting {step.target}")
    elif step.action is Action.REMOVE_STALE_PIDFILE:
        Path(step.target).unlink(missing_ok=True)
    elif step.action is Action.CREATE_NETNS:
        run_command(["ip", "netns", "add", netns], f"creating network namespace {netns}")
        run_command(["ip", "-n", netns, "link", "set", "lo", "up"], f"bringing up lo in {netns}")
    elif step.action is Action.START_VIRTLOGD:
        run_command(["virtlogd", "-d"], "starting virtlogd")
        _record("virtlogd", None)
    elif step.action is Action.START_LIBVIRTD:
        run_command(
            ["ip", "netns", "exec", netns, "libvirtd", "-d"], f"starting libvirtd in {netns}"
        )
        _wait_for_socket(timeout)
        _record("libvirtd", netns)
    elif step.action is Action.WAIT_FOR_SOCKET:
        _wait_for_socket(timeout)
    elif step.action is Action.ENSURE_DEFAULT_NETWORK:
        return Step(step.action, step.target, ensure_default_network())
    return step


def start(netns: str = DEFAULT_NETNS, *, timeout: float = 30.0) -> StartReport:
    """Make sure a libvirt daemon answers on qemu:///system; start one only when none does."""
    validate_name(netns, what="network namespace")  # it becomes a path under /run/netns
    if os.geteuid() != 0:
        if daemon_answers():
            return _report_running(netns)
        raise HostError("starting libvirt's daemons needs root", hint="run kvmgr as root")
    steps = plan_start(gather_facts(netns), netns)
    if [step.action for step in steps] == [Action.NOTHING]:
        return _report(netns, steps)
    done = [_carry_out(step, netns, timeout) for step in steps]
    return _report(netns, done)


def _report_running(netns: str) -> StartReport:
    return _report(netns, [Step(Action.NOTHING, SYSTEM_URI, "a libvirt daemon already answers")])


def _report(netns: str, steps: list[Step]) -> StartReport:
    return StartReport(netns=netns, steps=steps, version=daemon_version())


def daemon_version(uri: str = SYSTEM_URI) -> str:
    with open_connection(uri, readonly=True) as conn:
        return libvirt_version(conn)


def stop(*, timeout: float = 15.0) -> list[Step]:
    """Stop the daemons kvmgr started (and only those); return what was done."""
    if os.geteuid() != 0:
        raise HostError("stopping libvirt's daemons needs root", hint="run kvmgr as root")
    steps = plan_stop(load_records(), running_daemons())
    for step in steps:
        if step.action is Action.STOP_DAEMON:
            _terminate(int(step.reason), step.target, timeout)
    save_records([])
    return steps


def _terminate(pid: int, name: str, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while (PROC / str(pid)).exists():
        if time.monotonic() > deadline:
            raise HostError(
                f"{name} (pid {pid}) did not stop within {timeout:.0f} s",
                hint=f"see {LIBVIRTD_LOG}; kill it by pid if it is hung",
            )
        time.sleep(0.1)


@dataclass
class DaemonStatus:
    daemons: list[RunningDaemon]
    started_by_kvmgr: set[int]
    answers: bool
    version: str | None


def status() -> DaemonStatus:
    """Which libvirt daemons run (pid, namespace), which kvmgr started, and the version."""
    running = running_daemons()
    records = {(r.pid, r.start_time) for r in load_records()}
    mine = {d.pid for d in running if (d.pid, d.start_time) in records}
    answers = daemon_answers()
    return DaemonStatus(running, mine, answers, daemon_version() if answers else None)
