"""Starting a VM and waiting until it is ready, for every guest, not only kvmgr's demo guest.

``--wait ip`` is done when one of the guest's addresses is seen (libvirt's DHCP lease, the guest
agent, the ARP and neighbour tables, the guest's DHCP/ARP traffic heard meanwhile:
:class:`kvmgr.services.addresses.AddressWatch`).  ``--wait ready`` is done at
the first of these signals:

* the console marker ``KVMGR-READY`` that kvmgr's demo/test guests print on their serial console
  (watched only when the VM has a serial console; the VM is started paused and the console
  attached before it runs, so the line cannot be missed);
* the guest agent answering ``guest-ping`` (``libvirt_qemu.qemuAgentCommand``);
* an SSH banner (a line starting ``SSH-``) on port 22 of one of the guest's addresses.

The guest's network is reachable only from the network namespace libvirt's daemon runs in (kvmgr
starts it in namespace ``kvmgr`` on hosts without systemd, :mod:`kvmgr.host.daemons`), so the SSH
probe's socket is made inside that namespace (:func:`kvmgr.services.daemon_ns.run_in_daemon_netns`);
for a remote daemon, or when the namespace cannot be
entered, that signal is skipped and the answer says so.

What was seen is reported ("ready: ssh banner SSH-2.0-OpenSSH_9.2 at 192.168.122.5:22", "ip
192.168.122.5 from lease").  A wait that times out never touches the VM: :class:`NotReady` says
what was and was not seen and how to look at the guest.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, InvalidState, KvmgrError, OperationFailed, libvirt_errors
from kvmgr.services.console import ConsoleSession, ConsoleTimeout
from kvmgr.xml.domain import Domain

if TYPE_CHECKING:
    from kvmgr.services.addresses import AddressWatch

#: What kvmgr's demo/test guests print on their serial console when they are ready.
READY_MARKER = "KVMGR-READY"
WAIT_MODES = ("none", "ip", "ready")
AGENT_CHANNEL = "org.qemu.guest_agent.0"
SSH_PORT = 22
#: Seconds between rounds of probes; each probe is bounded well below the whole wait.
ROUND = 1.0
_CONNECT_TIMEOUT = 1.0
_BANNER_TIMEOUT = 3.0
_AGENT_TIMEOUT = 2  # seconds, libvirt's unit for qemuAgentCommand

Progress = Callable[[str], None]


class NotReady(OperationFailed):
    """The wait ended before the guest showed the signal it waited for; the VM is untouched."""


@dataclass
class Readiness:
    """What a wait saw: the signal that ended it and the first address seen."""

    mode: str
    signal: str  # "console marker", "guest agent", "ssh banner" or "ip"
    detail: str
    ip: str | None = None
    ip_source: str | None = None
    seconds: float = 0.0

    def __str__(self) -> str:
        if self.mode == "ip":
            return f"ip {self.detail}"
        return f"ready: {self.signal} {self.detail}"


# ------------------------------------------------------------------ start, then wait
def start_and_wait(
    conn: Connection,
    dom: libvirt.virDomain,
    wait: str,
    timeout: float,
    *,
    started: Callable[[], None] | None = None,
    progress: Progress | None = None,
) -> Readiness | None:
    """Start ``dom`` and wait for ``wait`` (none, ip, ready) for at most ``timeout`` seconds.

    ``started`` runs once the VM runs, before the wait: from then on a timeout is the guest's
    slowness, not a failure of the start (create records there that the VM is kept).
    """
    check_wait(wait, timeout)
    name = dom.name()
    if wait != "ready":
        with libvirt_errors(f"starting VM {name}"):
            dom.create()
        if started is not None:
            started()
        return None if wait == "none" else wait_for(conn, dom, wait, timeout, progress=progress)
    # Start paused and attach the console before the first instruction runs, so no line the
    # guest prints (the marker included) can be missed.
    with libvirt_errors(f"starting VM {name}"):
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    session, why_not = _open_console(conn, dom)
    try:
        with libvirt_errors(f"resuming VM {name}"):
            dom.resume()
        if started is not None:
            started()
        return wait_for(conn, dom, wait, timeout, session=session, no_console=why_not,
                        progress=progress)  # fmt: skip
    finally:
        if session is not None:
            session.close()


def start_vm(
    conn: Connection,
    name: str,
    wait: str = "none",
    timeout: float = 300.0,
    *,
    progress: Progress | None = None,
) -> Readiness | None:
    """``kvmgr vm start NAME --wait ...``: start a shut-off VM and wait for it."""
    from kvmgr.services import vms

    check_wait(wait, timeout, option="--timeout")
    dom = vms.startable(conn, name)
    try:
        return start_and_wait(conn, dom, wait, timeout, progress=progress)
    except NotReady as err:
        err.message = f"VM {name!r} was started and is kept running, but {err.message}"
        raise


def start_paused(conn: Connection, name: str) -> libvirt.virDomain:
    """Start VM ``name`` paused, for a console attached before it runs (then
    :func:`attach_then_resume`)."""
    from kvmgr.services import vms

    dom = vms.startable(conn, name)
    with libvirt_errors(f"starting VM {name}"):
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    return dom


def attach_then_resume(
    dom: libvirt.virDomain, attach: Callable[[Callable[[], None]], None]
) -> None:
    """``kvmgr vm start NAME --console``: ``attach(resume)`` opens the console and calls
    ``resume`` once it is open, so the boot is shown from its first line.  A console that cannot
    be opened (another session has it) still leaves the VM running."""
    resumed: list[bool] = []

    def resume() -> None:
        with libvirt_errors(f"resuming VM {dom.name()}"):
            dom.resume()
        resumed.append(True)

    try:
        attach(resume)
    finally:
        if not resumed:
            resume()


def check_wait(wait: str, timeout: float, option: str = "--wait-timeout") -> None:
    if wait not in WAIT_MODES:
        raise InvalidInput(f"--wait {wait!r} is not known", hint="use ready, ip or none")
    if timeout <= 0:
        raise InvalidInput(f"{option} {timeout:g} must be greater than zero", hint="e.g. 300")


def _open_console(
    conn: Connection, dom: libvirt.virDomain
) -> tuple[ConsoleSession | None, str | None]:
    """A console session to watch for the marker, or None and why there is none."""
    devices = _definition(dom).devices
    if not devices.serials and not devices.consoles:
        return None, "the VM has no serial console"
    try:
        return ConsoleSession(conn, dom.name()), None
    except KvmgrError as err:
        return None, f"its console could not be opened: {err.message}"


# ------------------------------------------------------------------ the wait
@dataclass
class _Watch:
    """The state of one wait: each signal's last outcome, for the answer and for a timeout."""

    mode: str
    finder: AddressWatch | None
    began: float = field(default_factory=time.monotonic)
    ip: str | None = None
    ip_source: str | None = None
    addresses: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # signal -> why not (yet) seen
    console_lost: bool = False

    def done(self, signal: str, detail: str) -> Readiness:
        return Readiness(self.mode, signal, detail, self.ip, self.ip_source,
                         time.monotonic() - self.began)  # fmt: skip


def wait_for(
    conn: Connection,
    dom: libvirt.virDomain,
    wait: str,
    timeout: float,
    *,
    session: ConsoleSession | None = None,
    no_console: str | None = None,
    progress: Progress | None = None,
) -> Readiness:
    """Wait for a running VM: ``ip`` or ``ready`` (see the module's doc).  ``session`` is an
    open console to watch for the marker; ``no_console`` says why there is none."""
    from kvmgr.services.addresses import AddressWatch

    has_nics = bool(_definition(dom).devices.interfaces)
    # listens to the guest's DHCP/ARP meanwhile where it can: a bridged guest's lease is
    # nowhere else
    finder = AddressWatch(conn, dom) if has_nics else None
    try:
        return _wait(conn, dom, wait, timeout, _Watch(wait, finder), _Probes(session),
                     no_console, progress or (lambda _message: None))  # fmt: skip
    finally:
        if finder is not None:
            finder.close()


def _wait(
    conn: Connection,
    dom: libvirt.virDomain,
    wait: str,
    timeout: float,
    watch: _Watch,
    probes: _Probes,
    no_console: str | None,
    say: Progress,
) -> Readiness:
    name = dom.name()
    if wait == "ready":
        probes.agent, probes.ssh = _Agent(conn, dom), _SshProbe(conn)
        watch.notes["console marker"] = no_console or f"{READY_MARKER} not printed"
        watch.notes["guest agent"] = probes.agent.why_not or "no answer to guest-ping"
        watch.notes["ssh banner"] = probes.ssh.why_not or "no address to probe yet"
    else:
        probes.console = None
    if watch.finder is None:
        watch.notes["ip"] = "the VM has no network interface"
    if wait == "ip":
        say(f"waiting for {name} to get an IP address")
    else:
        assert probes.agent is not None and probes.ssh is not None
        usable = [
            signal
            for signal, able in (
                ("console marker", probes.console is not None),
                ("guest agent", probes.agent.why_not is None),
                ("ssh banner", probes.ssh.why_not is None),
            )
            if able
        ]
        say(f"waiting for {name} to be ready ({', '.join(usable) or 'no signal it can give'})")
    deadline = watch.began + timeout
    while True:
        round_end = min(time.monotonic() + ROUND, deadline)
        _check_running(dom, name)
        seen = _one_round(watch, probes, round_end, say)
        if seen is not None:
            if seen[0] in ("console marker", "guest agent"):
                _late_ip(watch, deadline)
            return watch.done(*seen)
        if time.monotonic() >= deadline:
            raise _timeout(name, wait, timeout, watch)
        time.sleep(max(0.0, round_end - time.monotonic()))


@dataclass
class _Probes:
    console: ConsoleSession | None
    agent: _Agent | None = None
    ssh: _SshProbe | None = None


def _one_round(
    watch: _Watch, probes: _Probes, until: float, say: Progress
) -> tuple[str, str] | None:
    """One look at every signal: (signal, detail) of the first seen, or None."""
    if probes.console is not None:
        if _marker(probes.console, watch, until):
            return "console marker", f"{READY_MARKER} on the serial console"
        if watch.console_lost:
            probes.console = None
    if watch.finder is not None:
        _look_for_ip(watch, say)
        if watch.mode == "ip" and watch.ip is not None:
            return "ip", f"{watch.ip} from {watch.ip_source}"
    if probes.agent is not None:
        answer = probes.agent.ping(watch)
        if answer is not None:
            return "guest agent", answer
    if probes.ssh is not None:
        banner = probes.ssh.probe(watch)
        if banner is not None:
            return "ssh banner", banner
    return None


def _check_running(dom: libvirt.virDomain, name: str) -> None:
    with libvirt_errors(f"reading the state of VM {name}"):
        state, _reason = dom.state()
    if state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
        from kvmgr.services.vms import STATE_NAMES

        raise InvalidState(
            f"VM {name} stopped before it was ready (it is {STATE_NAMES.get(state, state)})",
            hint=f"see what the guest printed: 'kvmgr vm console {name}' after starting it again",
        )


def _marker(console: ConsoleSession, watch: _Watch, until: float) -> bool:
    try:
        console.expect(READY_MARKER, timeout=max(0.05, until - time.monotonic()))
    except ConsoleTimeout:
        return False
    except InvalidState:  # the console closed: someone took it over
        watch.notes["console marker"] = "the console was taken over by another session"
        watch.console_lost = True
        return False
    return True


def _look_for_ip(watch: _Watch, say: Progress) -> None:
    assert watch.finder is not None
    try:
        found = watch.finder.addresses(wait=0.0)
    except KvmgrError as err:
        watch.notes["ip"] = f"asking for addresses failed: {err.message}"
        return
    if found and watch.ip is None:
        watch.ip, watch.ip_source = found[0][1], found[0][2]
        say(f"ip {watch.ip} from {watch.ip_source} (NIC {found[0][0]})")
    watch.addresses = [ip for _mac, ip, _source in found] or watch.addresses


def _late_ip(watch: _Watch, deadline: float) -> None:
    """The guest is ready: give its address a few seconds to be seen (dnsmasq records a lease a
    moment after the guest configured it), never longer than the wait."""
    end = min(deadline, time.monotonic() + 5.0)
    while watch.finder is not None and watch.ip is None and time.monotonic() < end:
        _look_for_ip(watch, lambda _message: None)
        if watch.ip is None:
            time.sleep(0.5)


def _timeout(name: str, wait: str, timeout: float, watch: _Watch) -> NotReady:
    seen = [f"ip {watch.ip} from {watch.ip_source}"] if watch.ip else []
    if watch.finder is not None and watch.finder.why_not and "ip" not in watch.notes:
        watch.notes["ip"] = (
            "no lease, agent or ARP entry; kvmgr could not listen to its traffic: "
            f"{watch.finder.why_not}"
        )
    if wait == "ip":
        why = watch.notes.get("ip", "no lease, agent or ARP entry")
        message = f"got no IP address within {timeout:g} s ({why})"
    else:
        not_seen = "; ".join(
            f"{signal} ({why})" for signal, why in watch.notes.items() if signal != "ip"
        )
        if watch.ip is None:
            not_seen += f"; ip ({watch.notes.get('ip', 'no lease, agent or ARP entry')})"
        message = (
            f"was not ready within {timeout:g} s; seen: {', '.join(seen) or 'nothing'}; "
            f"not seen: {not_seen}"
        )
    return NotReady(
        message,
        hint=f"look at the guest with 'kvmgr vm console {name}' (serial) or 'kvmgr vm vnc "
        f"{name}' (display), or wait longer (a larger timeout)",
    )


def _definition(dom: libvirt.virDomain) -> Domain:
    with libvirt_errors(f"reading the definition of VM {dom.name()}"):
        return Domain.from_xml(dom.XMLDesc(0))


# ------------------------------------------------------------------ the guest agent
class _Agent:
    """``guest-ping`` through libvirt; ``why_not`` is set when this VM cannot have an answer."""

    def __init__(self, conn: Connection, dom: libvirt.virDomain) -> None:
        self.dom = dom
        self.why_not: str | None = None
        channels = _definition(dom).devices.channels
        if conn.is_test_driver:
            self.why_not = "the test driver has no guest agent"
        elif not any(channel.target_name == AGENT_CHANNEL for channel in channels):
            self.why_not = f"the VM has no {AGENT_CHANNEL} channel"

    def ping(self, watch: _Watch) -> str | None:
        if self.why_not is not None:
            return None
        import libvirt_qemu

        try:
            libvirt_qemu.qemuAgentCommand(self.dom, '{"execute": "guest-ping"}', _AGENT_TIMEOUT, 0)
        except libvirt.libvirtError as err:
            if err.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT,
                                        libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED):  # fmt: skip
                self.why_not = f"not available: {err.get_error_message()}"
            watch.notes["guest agent"] = f"no answer: {err.get_error_message()}"
            return None
        return "answered guest-ping"


# ------------------------------------------------------------------ the SSH banner
class _SshProbe:
    """Port 22 of the guest's addresses, from the daemon's network namespace."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.why_not: str | None = None
        from kvmgr.connect.uri import is_local

        if conn.is_test_driver:
            self.why_not = "the test driver's guests have no network"
        elif not is_local(conn.uri):
            self.why_not = (
                f"not probed: the daemon runs on another host ({conn.uri}) and its guests' "
                "network is not reachable from here"
            )

    def probe(self, watch: _Watch) -> str | None:
        if self.why_not is not None:
            return None
        outcomes = []
        for address in watch.addresses:
            try:
                sock = daemon_socket(self.conn, address)
            except OSError as err:
                self.why_not = f"not probed: {err.strerror or err}"
                watch.notes["ssh banner"] = self.why_not
                return None
            try:
                banner = read_banner(sock, address, SSH_PORT)
            except OSError as err:
                outcomes.append(f"{_where(address)}: {err.strerror or err}")
                continue
            if banner.startswith("SSH-"):
                return f"{banner} at {_where(address)}"
            outcomes.append(f"{_where(address)} answered {banner[:40]!r}, not an SSH banner")
        if outcomes:
            watch.notes["ssh banner"] = "; ".join(outcomes)
        return None


def _where(address: str) -> str:
    return f"[{address}]:{SSH_PORT}" if ":" in address else f"{address}:{SSH_PORT}"


def daemon_socket(conn: Connection, address: str) -> socket.socket:
    """A TCP socket for ``address`` made in the local daemon's network namespace, where its
    guests' networks are (a socket stays in the namespace it was made in).

    A daemon without a pid file (started by systemd) shares the host's namespace: the socket is
    made here.  Raises OSError when the namespace cannot be entered (not root).
    """
    from kvmgr.services.daemon_ns import run_in_daemon_netns

    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    try:
        return run_in_daemon_netns(conn, lambda: socket.socket(family, socket.SOCK_STREAM))
    except LookupError:
        return socket.socket(family, socket.SOCK_STREAM)


def read_banner(sock: socket.socket, address: str, port: int) -> str:
    """The first line the TCP server at ``address:port`` sends, read through ``sock`` (closed
    after).  Raises OSError when nothing answers: refused, unreachable, silent."""
    with sock:
        sock.settimeout(_CONNECT_TIMEOUT)
        sock.connect((address, port))
        sock.settimeout(_BANNER_TIMEOUT)
        data = b""
        while b"\n" not in data and len(data) < 256:
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
    if not data:
        raise OSError(f"{address}:{port} closed without a word")
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()
