"""``kvmgr host add NAME ssh://root@ADDR --setup``: the host set-up plan, carried out over ssh.

The remote machine cannot run kvmgr (CentOS 7 has Python 3.6; kvmgr needs 3.11), so nothing of
kvmgr runs there: kvmgr reads the facts with a few POSIX ``sh`` commands over ``ssh``, decides
the plan here with the same pure :func:`kvmgr.host.setup.build_plan` as ``kvmgr host setup``, and
runs each step's argv there (quoted by ``shlex``, never formatted into a shell string).  The
remote needs only ``sh``, its package manager (yum, dnf or apt) and systemd.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

from kvmgr.errors import HostError, InvalidInput, Unsupported
from kvmgr.host.osrelease import parse_os_release
from kvmgr.host.run import run
from kvmgr.host.setup import (
    DAEMONS_START,
    INSTALL_TIMEOUT,
    Plan,
    SetupFacts,
    Step,
    build_plan,
    package_query,
    parse_installed,
    profile_for,
)

SSH_CONNECT_TIMEOUT = 10
_SECTION = "--kvmgr-section--"
# One round trip for what the profile is chosen by: os-release, architecture, init system.
_FACTS_SCRIPT = (
    "cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release; "
    f"echo {_SECTION}; uname -m; echo {_SECTION}; "
    "if [ -d /run/systemd/system ]; then echo systemd; fi"
)


#: libvirt's own qemu+ssh URI parameters, understood here the same way and carried over
_SSH_PARAMS = ("keyfile", "command")


@dataclass(frozen=True)
class SshTarget:
    """``ssh://[user@]host[:port][?keyfile=PATH&command=SSH]``: where to ssh to, and the qemu+ssh
    URI it is registered as (``keyfile`` and ``command`` mean what they mean to libvirt)."""

    user: str
    host: str
    port: int | None = None
    keyfile: str | None = None
    command: str | None = None

    @classmethod
    def parse(cls, uri: str) -> SshTarget:
        parts = urlsplit(uri)
        hint = "use ssh://root@ADDR (or ssh://user@ADDR:PORT, with sudo for that user)"
        if parts.scheme != "ssh" or not parts.hostname:
            raise InvalidInput(f"--setup needs an ssh://USER@ADDR target, not {uri!r}", hint=hint)
        if parts.path not in ("", "/") or parts.password:
            raise InvalidInput(f"{uri!r}: only ssh://USER@ADDR[:PORT] is understood", hint=hint)
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - set(_SSH_PARAMS)
        if unknown or any(len(values) != 1 or not values[0] for values in query.values()):
            raise InvalidInput(
                f"{uri!r}: the parameters understood are keyfile=PATH and command=PATH, once",
                hint=hint,
            )
        try:
            port = parts.port
        except ValueError as err:
            raise InvalidInput(f"{uri!r} has a bad port", hint=hint) from err
        keyfile, command = (query.get(name, [None])[0] for name in _SSH_PARAMS)
        return cls(parts.username or "root", parts.hostname, port, keyfile, command)

    @property
    def address(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def libvirt_uri(self) -> str:
        port = f":{self.port}" if self.port else ""
        params = {"keyfile": self.keyfile, "command": self.command}
        query = urlencode({k: v for k, v in params.items() if v}, safe="/")
        return f"qemu+ssh://{self.user}@{self.address}{port}/system" + (
            f"?{query}" if query else ""
        )

    def ssh_argv(self, command: str) -> list[str]:
        program = self.command or "ssh"
        argv = [program, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT}"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.keyfile:
            argv += ["-i", self.keyfile]
        # "--" ends ssh's options; the command is one word that the remote's shell parses
        return [*argv, "--", f"{self.user}@{self.host}", command]

    def sh(self, command: str, *, timeout: float = 60.0, check: bool = True) -> str:
        """Run ``command`` (a POSIX sh command line) there; its stdout."""
        result = run(self.ssh_argv(command), timeout=timeout, check=False)
        if result.returncode == 255:  # ssh's own failure: never "is libvirtd running?"
            raise HostError(
                f"ssh to {self.user}@{self.host} failed: {result.stderr.strip()[-300:]}",
                hint="check the address, that sshd runs there and that your key is accepted "
                "(kvmgr runs ssh with BatchMode=yes: no password prompts)",
            )
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()[-500:]
            raise HostError(
                f"on {self.host}: '{command}' failed (exit {result.returncode}): {detail}"
            )
        return result.stdout


def remote_facts(target: SshTarget) -> SetupFacts:
    """The facts :func:`build_plan` decides on, read over ssh (two round trips)."""
    osr_text, arch, init = [*target.sh(_FACTS_SCRIPT).split(_SECTION), "", "", ""][:3]
    osr = parse_os_release(osr_text)
    arch = arch.strip() or "x86_64"
    profile = profile_for(osr, arch)
    systemd = init.strip() == "systemd"
    names = list(profile.packages)
    lines = [shlex.join(package_query(profile.manager, names)), f"echo {_SECTION}"]
    for unit in profile.units:
        quoted = shlex.quote(unit)
        lines.append(f"systemctl is-enabled --quiet {quoted} && echo enabled {quoted}")
        lines.append(f"systemctl is-active --quiet {quoted} && echo active {quoted}")
    # each line may fail (a missing package, a disabled unit): ';' keeps going, true ends at 0
    packages_out, _, units_out = target.sh("; ".join([*lines, "true"])).partition(_SECTION)
    states = [line.split(None, 1) for line in units_out.splitlines() if line.strip()]
    return SetupFacts(
        os_release=osr,
        installed=parse_installed(profile.manager, names, packages_out),
        systemd=systemd,
        enabled_units=frozenset(unit for state, unit in states if state == "enabled"),
        active_units=frozenset(unit for state, unit in states if state == "active"),
        arch=arch,
    )


def remote_command(target: SshTarget, step: Step) -> str:
    """The step as a command line for the remote shell: ``env K=V argv...``, sudo unless root."""
    env = [f"{key}={value}" for key, value in step.env.items()]
    argv = [*(["env", *env] if env else []), *step.argv]
    if target.user != "root":
        argv = ["sudo", "-n", *argv]
    return shlex.join(argv)


def setup_over_ssh(target: SshTarget, *, dry_run: bool = False) -> tuple[Plan, list[Step]]:
    """Plan the set-up of ``target`` and, unless ``dry_run``, carry it out; (plan, steps)."""
    facts = remote_facts(target)
    if not facts.systemd:
        raise Unsupported(
            f"{target.host} has no systemd: kvmgr cannot start libvirtd there for you",
            hint="start libvirtd there, then: kvmgr host add NAME " + target.libvirt_uri(),
        )
    plan = build_plan(facts)
    if dry_run:
        return plan, list(plan.steps)
    done: list[Step] = []
    for step in plan.steps:
        if step.argv == DAEMONS_START:  # only planned without systemd, refused above
            raise Unsupported("starting daemons without systemd is local only")
        try:
            target.sh(remote_command(target, step), timeout=INSTALL_TIMEOUT)
        except HostError as err:
            finished = "; ".join(s.title for s in done) or "nothing"
            raise HostError(
                f"on {target.host}: setup step '{step.title}' failed: {err.message}",
                hint=f"done before it: {finished}. Fix the cause and run the same command again",
            ) from err
        done.append(step)
    return plan, done
