"""``kvmgr host setup``: install and enable what a host needs to run KVM guests through libvirt.

Three separate parts, so the decisions are testable without touching a host:

* :func:`gather_facts` reads the host: os-release, which packages are installed, the init system,
  which daemons already run.
* :func:`build_plan` is pure: facts in, a :class:`Plan` (steps, each an argv) out.  Only missing
  packages and daemons that are not yet enabled/answering appear, so a second run plans nothing.
* :func:`execute` carries a plan out, step by step.

Steps that need no shell are argv lists; a step whose argv starts with ``kvmgr`` is carried out
in-process (``kvmgr host daemons start``), the same thing a user would get by typing it.
"""

from __future__ import annotations

import os
import platform
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvmgr.errors import HostError, Unsupported
from kvmgr.host.osrelease import OsRelease, read_os_release
from kvmgr.host.run import run
from kvmgr.host.swtpm_ca import ForeignCAFiles, foreign_ca_files

INSTALL_TIMEOUT = 1800.0  # package downloads on a slow mirror take minutes, not hours
DAEMONS_START = ("kvmgr", "host", "daemons", "start")


@dataclass(frozen=True)
class Profile:
    """How one family of distributions gets KVM: package manager, packages, daemons."""

    family: str
    manager: str  # apt, yum or dnf
    packages: tuple[str, ...]
    units: tuple[str, ...]  # systemd units to enable --now


# Modular daemons (one per libvirt driver) are the default from EL 9; EL 8 and CentOS 7 use the
# monolithic libvirtd.  Sockets are enabled, so the daemons start on the first connection.
_EL9_UNITS = (
    "virtqemud.socket",
    "virtnetworkd.socket",
    "virtstoraged.socket",
    "virtnodedevd.socket",
    "virtsecretd.socket",
    "virtlogd.socket",
)
_APT_QEMU = {"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}
_APT_FIRMWARE = {"x86_64": "ovmf", "aarch64": "qemu-efi-aarch64"}


def profile_for(osr: OsRelease, arch: str = "x86_64") -> Profile:
    """The profile for a distribution, or :class:`Unsupported` naming the ones kvmgr knows."""
    if osr.is_like("debian", "ubuntu"):
        if arch not in _APT_QEMU:
            raise Unsupported(f"kvmgr host setup does not know QEMU packages for {arch}")
        packages: tuple[str, ...] = (
            _APT_QEMU[arch],
            "qemu-utils",
            "libvirt-daemon-system",
            "libvirt-clients",
            "virtinst",
            "dnsmasq-base",
            _APT_FIRMWARE[arch],
        )
        return Profile("debian", "apt", packages, ("libvirtd.service",))
    if osr.is_like("rhel", "centos", "fedora") and osr.id != "fedora":
        major = osr.major
        if major == 7:
            packages = ("qemu-kvm", "libvirt", "virt-install", "bridge-utils")
            return Profile("el7", "yum", packages, ("libvirtd.service",))
        if major == 8:
            return Profile(
                "el8", "dnf", ("qemu-kvm", "libvirt", "virt-install"), ("libvirtd.service",)
            )
        if major is not None and major >= 9:
            return Profile("el9", "dnf", ("qemu-kvm", "libvirt", "virt-install"), _EL9_UNITS)
    raise Unsupported(
        f"kvmgr host setup does not support {osr.pretty_name or osr.id} {osr.version_id}".strip(),
        hint="supported: Debian, Ubuntu, CentOS 7, CentOS Stream/RHEL/Rocky/Alma 8 and 9",
    )


@dataclass(frozen=True)
class SetupFacts:
    """Everything :func:`build_plan` decides on; gathered by :func:`gather_facts`."""

    os_release: OsRelease
    installed: frozenset[str]
    systemd: bool
    enabled_units: frozenset[str] = frozenset()
    active_units: frozenset[str] = frozenset()
    daemon_answers: bool = False
    arch: str = "x86_64"
    swtpm_ca: ForeignCAFiles | None = None  # read on this host only (remote setup: None)


@dataclass(frozen=True)
class Step:
    """One command of the plan: what it does, and its argv (plus environment overrides)."""

    title: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def command_line(self) -> str:
        """The step as a shell command line, for people to read or paste."""
        assignments = [f"{key}={shlex.quote(value)}" for key, value in self.env.items()]
        return " ".join([*assignments, shlex.join(self.argv)])

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "argv": list(self.argv), "env": dict(self.env)}


@dataclass(frozen=True)
class Plan:
    distribution: str
    family: str
    steps: tuple[Step, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "distribution": self.distribution,
            "family": self.family,
            "steps": [step.as_dict() for step in self.steps],
        }


def build_plan(facts: SetupFacts) -> Plan:
    """The steps this host still needs; empty when everything is installed and running."""
    profile = profile_for(facts.os_release, facts.arch)
    missing = [name for name in profile.packages if name not in facts.installed]
    steps = [*_install_steps(profile.manager, missing), *_daemon_steps(profile, facts)]
    if facts.swtpm_ca is not None:
        ca = facts.swtpm_ca
        steps.append(Step(f"give swtpm's local CA ({ca.statedir}) to {ca.user}", ca.fix_argv))
    osr = facts.os_release
    name = osr.pretty_name or f"{osr.id} {osr.version_id}".strip()
    return Plan(name, profile.family, tuple(steps))


def _install_steps(manager: str, missing: list[str]) -> list[Step]:
    if not missing:
        return []
    title = f"install {', '.join(missing)}"
    if manager == "apt":
        quiet = {"DEBIAN_FRONTEND": "noninteractive"}
        return [
            Step("refresh the package lists", ("apt-get", "update")),
            Step(title, ("apt-get", "install", "-y", "--no-install-recommends", *missing), quiet),
        ]
    return [Step(title, (manager, "install", "-y", *missing))]


def _daemon_steps(profile: Profile, facts: SetupFacts) -> list[Step]:
    if not facts.systemd:
        if facts.daemon_answers:
            return []
        return [Step("start virtlogd and libvirtd (no systemd)", DAEMONS_START)]
    pending = [
        unit
        for unit in profile.units
        if unit not in facts.enabled_units or unit not in facts.active_units
    ]
    if not pending:
        return []
    return [
        Step(f"enable and start {', '.join(pending)}", ("systemctl", "enable", "--now", *pending))
    ]


# ----------------------------------------------------------------------------------- facts
def installed_packages(manager: str, names: Iterable[str]) -> frozenset[str]:
    """Which of ``names`` are installed, asked of dpkg or rpm (a missing package is no error)."""
    names = list(names)
    result = run(package_query(manager, names), check=False, timeout=30)
    return parse_installed(manager, names, result.stdout)


def package_query(manager: str, names: list[str]) -> list[str]:
    """The argv asking dpkg or rpm which of ``names`` are installed (run here or over ssh)."""
    if manager == "apt":
        return ["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *names]
    return ["rpm", "-q", "--qf", "%{NAME}\n", *names]


def parse_installed(manager: str, names: list[str], stdout: str) -> frozenset[str]:
    if manager == "apt":
        return frozenset(
            parts[0]
            for parts in (line.split() for line in stdout.splitlines())
            if len(parts) >= 2 and parts[1] == "ii"
        )
    return frozenset(line.strip() for line in stdout.splitlines()) & set(names)


def _systemd_units(units: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    enabled, active = set(), set()
    for unit in units:
        if run(["systemctl", "is-enabled", "--quiet", unit], check=False).returncode == 0:
            enabled.add(unit)
        if run(["systemctl", "is-active", "--quiet", unit], check=False).returncode == 0:
            active.add(unit)
    return frozenset(enabled), frozenset(active)


def gather_facts() -> SetupFacts:
    """Read this host: distribution, installed packages, init system, running daemons."""
    from kvmgr.host import daemons

    osr = read_os_release()
    arch = platform.machine()
    profile = profile_for(osr, arch)
    systemd = daemons.is_systemd_host()
    enabled, active = _systemd_units(profile.units) if systemd else (frozenset(), frozenset())
    return SetupFacts(
        os_release=osr,
        installed=installed_packages(profile.manager, profile.packages),
        systemd=systemd,
        enabled_units=enabled,
        active_units=active,
        daemon_answers=daemons.daemon_answers(),
        arch=arch,
        swtpm_ca=foreign_ca_files(),
    )


# ----------------------------------------------------------------------------------- running
def execute(plan: Plan) -> list[Step]:
    """Carry the plan out in order; return the steps done.

    Package installs are not undone when a later step fails: the package manager leaves a
    consistent state after each step, and running setup again continues where this run stopped.
    """
    if plan.steps and os.geteuid() != 0:
        raise HostError("kvmgr host setup needs root to install packages", hint="run it as root")
    done: list[Step] = []
    for step in plan.steps:
        try:
            _carry_out(step)
        except HostError as err:
            finished = "; ".join(s.title for s in done) or "nothing"
            raise HostError(
                f"setup step '{step.title}' failed: {err.message}",
                hint=f"done before it: {finished}. Fix the cause and run 'kvmgr host setup' again",
            ) from err
        done.append(step)
    return done


def _carry_out(step: Step) -> None:
    if step.argv == DAEMONS_START:
        from kvmgr.host import daemons

        daemons.start()
        return
    run(step.argv, timeout=INSTALL_TIMEOUT, env={**os.environ, **step.env})
