"""Host bridges: move an uplink's addresses onto a new bridge, with verification and rollback.

Four backends, chosen by what the host uses to configure its network:

* **iproute2** (runtime, no persistence): the one carried out here, by ``ip`` commands, optionally
  inside a named network namespace.  Reading link state and the ``ip`` steps themselves live in
  :mod:`kvmgr.host.bridge_ip`; this module checks, carries them out, verifies and rolls back.
* **nmcli** (NetworkManager: EL 8/9), **ifcfg** (network-scripts: CentOS 7), **netplan** (Ubuntu):
  the change made through the host's own network configuration, so it persists; detection,
  plans from the host's files and their executors live in :mod:`kvmgr.host.bridge_backends`
  (``backend="auto"`` picks the one the host uses).

Safety: before changing anything kvmgr records the uplink's addresses and routes
(:class:`LinkState`).  After the move it checks the bridge holds every address and the default
route (and, when asked, that an address such as the gateway answers a ping).  Any failure restores
the recorded state exactly.  A bridge kvmgr creates carries an alias naming its uplink; kvmgr only
deletes bridges carrying that mark.

What lives here: :func:`create_bridge` / :func:`delete_bridge` (with their checks, verification
and rollback), :func:`list_bridges`, :func:`reachable`, and the persistent backends' rendered
definitions (:class:`BridgeSpec`, :func:`plan_nmcli`, :func:`plan_ifcfg`, :func:`plan_netplan`,
:func:`backend_for`).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kvmgr.errors import AlreadyExists, HostError, InvalidInput, InvalidState
from kvmgr.host.bridge_ip import (
    ALIAS_PREFIX,
    Argv,
    Ip,
    LinkState,
    differences,
    plan_create,
    plan_delete,
    plan_restore,
    validate_ifname,
)
from kvmgr.host.run import run

if TYPE_CHECKING:
    from kvmgr.host.bridge_backends import Settle
    from kvmgr.host.bridge_plans import Runner


@dataclass
class BridgeResult:
    bridge: str
    uplink: str
    netns: str | None
    commands: list[str]
    dry_run: bool
    moved: LinkState | None = None
    notes: list[str] = field(default_factory=list)
    backend: str = "iproute2"
    files: dict[str, str | None] = field(default_factory=dict)  # path: content (None: removed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bridge": self.bridge,
            "uplink": self.uplink,
            "netns": self.netns,
            "dry_run": self.dry_run,
            "backend": self.backend,
            "files": self.files,
            "commands": self.commands,
            "moved": self.moved.as_dict() if self.moved else None,
            "notes": self.notes,
        }


def create_bridge(
    bridge: str,
    uplink: str,
    *,
    netns: str | None = None,
    yes: bool = False,
    dry_run: bool = False,
    ping: str | None = None,
    ping_timeout: float = 3.0,
    backend: str = "auto",
    root: Path = Path("/"),
    runner: Runner | None = None,
    settle: Settle | None = None,
) -> BridgeResult:
    """Create ``bridge`` with ``uplink`` as its port and move the uplink's addresses onto it.

    Refuses an uplink carrying the default route unless ``yes``.  After the move, the bridge must
    hold every address and route the uplink had, and ``ping`` (if given) must answer; otherwise
    the uplink (and every configuration file) is restored exactly and :class:`HostError` says why.
    ``backend`` is ``auto`` (what the host uses), ``iproute2``, ``nmcli``, ``ifcfg`` or
    ``netplan``; files are read and written under ``root``, commands run through ``runner``.
    """
    from kvmgr.host import bridge_backends as persistent
    from kvmgr.host import bridge_plans as plans

    validate_ifname(bridge, what="bridge name")
    validate_ifname(uplink, what="uplink")
    if ping is not None:
        _check_address(ping)  # now: after the move, a bad one would end the run half made
    ip = Ip(netns)
    runner = runner or plans.Runner()
    # A dry run changes nothing, so it may show the plan for the default-route interface too.
    before = _check_create(ip, bridge, uplink, yes=yes or dry_run)
    chosen, plan, reason = persistent.plan_for(backend, before, bridge, root=root, runner=runner)
    if plan is not None:
        result = BridgeResult(
            bridge,
            uplink,
            netns,
            [shlex.join(c) for c in plan.commands],
            dry_run,
            notes=[reason, *plan.notes],
            backend=chosen,
            files=dict(plan.files),
        )
        if before.default_route is not None:
            result.notes.append(f"{uplink} carries the default route: needs --yes")
        if not dry_run:
            persistent.apply_plan(
                plan,
                before,
                root=root,
                runner=runner,
                ip=ip,
                ping=ping,
                ping_timeout=ping_timeout,
                settle=settle,
            )
            result.moved = ip.read(bridge)
        return result
    steps = plan_create(before, bridge)
    result = BridgeResult(bridge, uplink, netns, [shlex.join(ip.argv(s)) for s in steps], dry_run)
    result.notes.append(reason)
    if before.default_route is not None:
        result.notes.append(f"{uplink} carries the default route: needs --yes")
    if dry_run:
        return result
    try:
        for step in steps:
            ip.run(step)
        verify_moved(ip, before, bridge, ping, ping_timeout)
    except HostError as err:
        _rollback_create(ip, before, bridge, err)
    result.moved = ip.read(bridge)
    return result


def _check_create(ip: Ip, bridge: str, uplink: str, *, yes: bool) -> LinkState:
    if uplink == "lo":
        raise InvalidInput(
            "the loopback interface lo cannot be a bridge port",
            hint="give the interface that connects to the network, e.g. eth0",
        )
    state = ip.read(uplink)
    if ip.link_exists(bridge):
        raise AlreadyExists(f"interface {bridge!r} exists already", hint="choose another name")
    if state.master:
        raise InvalidState(
            f"{uplink} is already a port of {state.master}",
            hint=f"use the bridge {state.master}, or release {uplink} first",
        )
    if state.kind == "bridge":
        raise InvalidInput(f"{uplink} is itself a bridge", hint="give the physical interface")
    if state.default_route is not None and not yes:
        raise InvalidState(
            f"{uplink} carries the default route (via {state.default_route.gateway}): moving it "
            "can cut this host off the network",
            hint="check the plan with --dry-run, then repeat with --yes; kvmgr rolls back if the "
            "host loses its address or route",
        )
    return state


def verify_moved(ip: Ip, before: LinkState, bridge: str, ping: str | None, timeout: float) -> None:
    """The check every backend passes: ``bridge`` holds the uplink's addresses and routes."""
    if not ip.link_exists(bridge):  # e.g. the network service did not create it
        raise HostError(f"{bridge} does not exist after the change")
    after = ip.read(bridge)
    missing = {a.cidr for a in before.addresses} - {a.cidr for a in after.addresses}
    if missing:
        raise HostError(f"{bridge} lacks addresses {', '.join(sorted(missing))} after the move")
    lost = [r for r in before.routes if r not in after.routes]
    if lost:
        raise HostError(f"{bridge} lacks routes to {', '.join(r.dst for r in lost)} after the move")
    if ping is not None and not reachable(ping, netns=ip.netns, timeout=timeout):
        raise HostError(f"{ping} does not answer a ping through {bridge} after the move")


def _rollback_create(ip: Ip, before: LinkState, bridge: str, cause: HostError) -> None:
    """Undo a failed create: delete our bridge, put back the uplink's addresses and routes."""
    problems = []
    if ip.link_exists(bridge):
        try:
            ip.run(("link", "del", "dev", bridge))
        except HostError as err:
            problems.append(err.message)
    for step in plan_restore(before, ip):
        try:
            ip.run(step)
        except HostError as err:
            problems.append(err.message)
    left = differences(before, ip.read(before.name))
    if left or problems:
        raise HostError(
            f"creating {bridge} failed ({cause.message}) and the rollback is incomplete: "
            f"{'; '.join(left + problems)}",
            hint=f"restore {before.name} by hand: {before.as_dict()}",
        ) from cause
    raise HostError(
        f"creating {bridge} failed, {before.name} was restored as it was: {cause.message}",
        hint=cause.hint,
    ) from cause


def delete_bridge(
    bridge: str,
    *,
    netns: str | None = None,
    yes: bool = False,
    dry_run: bool = False,
    root: Path = Path("/"),
    runner: Runner | None = None,
    settle: Settle | None = None,
) -> BridgeResult:
    """Move a kvmgr-made bridge's addresses back to its uplink and delete it.

    A bridge made through a persistent backend is removed by restoring the configuration files
    kvmgr backed up when it made the bridge (or deleting the connections it added).
    """
    from kvmgr.host import bridge_backends as persistent
    from kvmgr.host import bridge_plans as plans

    validate_ifname(bridge, what="bridge name")
    ip = Ip(netns)
    if persistent.Backup.load(root, bridge) is not None:
        return persistent.delete_persistent(
            bridge,
            ip=ip,
            yes=yes,
            dry_run=dry_run,
            root=root,
            runner=runner or plans.Runner(),
            settle=settle,
        )
    before = ip.read(bridge)
    uplink = _kvmgr_uplink(before)
    if before.default_route is not None and not yes:
        raise InvalidState(
            f"{bridge} carries the default route",
            hint="check the plan with --dry-run, then repeat with --yes",
        )
    uplink_before = ip.read(uplink)
    steps = plan_delete(before, uplink)
    result = BridgeResult(bridge, uplink, netns, [shlex.join(ip.argv(s)) for s in steps], dry_run)
    if dry_run:
        return result
    try:
        for step in steps:
            ip.run(step)
        after = ip.read(uplink)
        missing = {a.cidr for a in before.addresses} - {a.cidr for a in after.addresses}
        if missing:
            raise HostError(f"{uplink} lacks {', '.join(sorted(missing))} after the move")
    except HostError as err:
        _rollback_delete(ip, before, uplink_before, err)
    result.moved = ip.read(uplink)
    return result


def _rollback_delete(ip: Ip, bridge: LinkState, uplink: LinkState, cause: HostError) -> None:
    problems = []
    steps: list[Argv] = []
    if not ip.link_exists(bridge.name):
        steps = plan_create(uplink, bridge.name)[:5]  # the bridge itself, not yet its addresses
    try:
        for step in steps:
            ip.run(step)
        for restore in (uplink, bridge):
            for step in plan_restore(restore, ip):
                ip.run(step)
    except HostError as err:
        problems.append(err.message)
    left = differences(bridge, ip.read(bridge.name)) if ip.link_exists(bridge.name) else ["gone"]
    if left or problems:
        raise HostError(
            f"deleting {bridge.name} failed ({cause.message}) and the rollback is "
            f"incomplete: {'; '.join(left + problems)}"
        ) from cause
    raise HostError(f"deleting {bridge.name} failed, it was restored: {cause.message}") from cause


def _kvmgr_uplink(state: LinkState) -> str:
    if state.kind != "bridge":
        raise InvalidInput(f"{state.name} is not a bridge")
    if not (state.alias or "").startswith(ALIAS_PREFIX):
        raise InvalidState(
            f"{state.name} was not created by kvmgr; kvmgr only deletes bridges it created",
            hint=f"remove it with your own network tools (ip link del {state.name})",
        )
    return (state.alias or "")[len(ALIAS_PREFIX) :]


def list_bridges(*, netns: str | None = None, root: Path = Path("/")) -> list[dict[str, Any]]:
    """Every bridge: its ports, addresses, state and whether kvmgr made it.

    kvmgr made it when it carries kvmgr's alias (iproute2) or kvmgr recorded it under ``root``
    (persistent backends, whose tools do not keep an alias).
    """
    from kvmgr.host.bridge_backends import Backup

    ip = Ip(netns)
    rows = []
    for link in ip.bridges():
        name = link["ifname"]
        state = ip.read(name)
        rows.append(
            {
                "name": name,
                "state": link.get("operstate", "").lower(),
                "mac": state.mac,
                "ports": ip.ports(name),
                "addresses": [a.cidr for a in state.addresses],
                "kvmgr": (state.alias or "").startswith(ALIAS_PREFIX)
                or Backup.load(root, name) is not None,
            }
        )
    return rows


# ----------------------------------------------------------------------------------- reachability
def _check_address(address: str) -> None:
    from ipaddress import ip_address

    try:
        ip_address(address)
    except ValueError as err:
        raise InvalidInput(
            f"{address!r} is not an IP address", hint="e.g. --ping 192.168.1.1 (the gateway)"
        ) from err


def reachable(address: str, *, netns: str | None = None, timeout: float = 3.0) -> bool:
    """True when ``address`` answers an ICMP echo (sent from ``netns`` when given)."""
    _check_address(address)
    probe = (sys.executable, "-m", "kvmgr.host.reach", address, str(timeout))
    argv = ("ip", "netns", "exec", netns, *probe) if netns else probe
    return run(argv, timeout=timeout + 10, check=False).returncode == 0


# ----------------------------------------------------------------------------------- persistent
@dataclass(frozen=True)
class BridgeSpec:
    """What a persistent bridge definition needs, taken from the uplink's recorded state."""

    bridge: str
    uplink: str
    mac: str
    addresses: tuple[str, ...]  # static CIDRs; empty with dhcp
    gateway4: str | None
    dhcp: bool

    @classmethod
    def from_state(cls, bridge: str, state: LinkState) -> BridgeSpec:
        static = tuple(a.cidr for a in state.addresses if not a.dynamic)
        dhcp = any(a.dynamic and a.family == "inet" for a in state.addresses)
        gateway = state.default_route.gateway if state.default_route else None
        return cls(bridge, state.name, state.mac, static, gateway, dhcp)


@dataclass(frozen=True)
class FilePlan:
    """A persistent backend's plan: files to write, commands to apply them, and to undo them."""

    backend: str
    files: dict[str, str]
    commands: tuple[Argv, ...]
    rollback: tuple[Argv, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "files": self.files,
            "commands": [list(c) for c in self.commands],
            "rollback": [list(c) for c in self.rollback],
        }


def plan_nmcli(spec: BridgeSpec) -> FilePlan:
    """NetworkManager: a bridge connection plus a port connection for the uplink."""
    bridge_con, port_con = spec.bridge, f"{spec.bridge}-port-{spec.uplink}"
    addressing: list[str]
    if spec.dhcp:
        addressing = ["ipv4.method", "auto"]
    else:
        v4 = [a for a in spec.addresses if ":" not in a]
        addressing = (
            ["ipv4.method", "manual", "ipv4.addresses", ",".join(v4)]
            if v4
            else ["ipv4.method", "disabled"]
        )
        if spec.gateway4:
            addressing += ["ipv4.gateway", spec.gateway4]
        v6 = [a for a in spec.addresses if ":" in a]
        if v6:
            addressing += ["ipv6.method", "manual", "ipv6.addresses", ",".join(v6)]
    add_bridge: Argv = (
        "nmcli",
        "connection",
        "add",
        "type",
        "bridge",
        "con-name",
        bridge_con,
        "ifname",
        spec.bridge,
        "bridge.stp",
        "no",
        "bridge.mac-address",
        spec.mac,
        *addressing,
    )
    add_port: Argv = (
        "nmcli",
        "connection",
        "add",
        "type",
        "bridge-slave",
        "con-name",
        port_con,
        "ifname",
        spec.uplink,
        "master",
        spec.bridge,
    )
    return FilePlan(
        "nmcli",
        {},
        (add_bridge, add_port, ("nmcli", "connection", "up", bridge_con)),
        (
            ("nmcli", "connection", "delete", port_con),
            ("nmcli", "connection", "delete", bridge_con),
            ("nmcli", "device", "connect", spec.uplink),
        ),
    )


_IFCFG_DIR = "/etc/sysconfig/network-scripts"


def _ifcfg(values: dict[str, str]) -> str:
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())


def plan_ifcfg(spec: BridgeSpec) -> FilePlan:
    """CentOS 7 network-scripts: ifcfg-BRIDGE holds the addresses, ifcfg-UPLINK points at it."""
    bridge: dict[str, str] = {
        "DEVICE": spec.bridge,
        "TYPE": "Bridge",
        "ONBOOT": "yes",
        "DELAY": "0",
        "STP": "no",
        "MACADDR": spec.mac,
    }
    if spec.dhcp:
        bridge["BOOTPROTO"] = "dhcp"
    else:
        bridge["BOOTPROTO"] = "none"
        v4 = [a for a in spec.addresses if ":" not in a]
        for index, cidr in enumerate(v4):
            suffix = "" if index == 0 else str(index)
            address, prefix = cidr.split("/")
            bridge[f"IPADDR{suffix}"] = address
            bridge[f"PREFIX{suffix}"] = prefix
        if spec.gateway4:
            bridge["GATEWAY"] = spec.gateway4
        v6 = [a for a in spec.addresses if ":" in a]
        if v6:
            bridge["IPV6INIT"] = "yes"
            bridge["IPV6ADDR"] = v6[0]
            if v6[1:]:
                bridge["IPV6ADDR_SECONDARIES"] = " ".join(v6[1:])
    port = {
        "DEVICE": spec.uplink,
        "TYPE": "Ethernet",
        "ONBOOT": "yes",
        "BOOTPROTO": "none",
        "BRIDGE": spec.bridge,
    }
    return FilePlan(
        "ifcfg",
        {
            f"{_IFCFG_DIR}/ifcfg-{spec.bridge}": _ifcfg(bridge),
            f"{_IFCFG_DIR}/ifcfg-{spec.uplink}": _ifcfg(port),
        },
        (("ifdown", spec.uplink), ("ifup", spec.uplink), ("ifup", spec.bridge)),
        (("ifdown", spec.bridge), ("ip", "link", "del", "dev", spec.bridge), ("ifup", spec.uplink)),
    )


def plan_netplan(spec: BridgeSpec) -> FilePlan:
    """Ubuntu netplan: one file defining the bridge over the uplink; later files win."""
    bridge: dict[str, Any] = {
        "interfaces": [spec.uplink],
        "macaddress": spec.mac,
        "parameters": {"stp": False, "forward-delay": 0},
    }
    if spec.dhcp:
        bridge["dhcp4"] = True
    else:
        bridge["addresses"] = list(spec.addresses)
        if spec.gateway4:
            bridge["routes"] = [{"to": "default", "via": spec.gateway4}]
    document = {
        "network": {
            "version": 2,
            "ethernets": {spec.uplink: {"dhcp4": False, "dhcp6": False}},
            "bridges": {spec.bridge: bridge},
        }
    }
    path = f"/etc/netplan/90-kvmgr-{spec.bridge}.yaml"
    return FilePlan(
        "netplan",
        {path: yaml.safe_dump(document, sort_keys=False)},
        (("netplan", "generate"), ("netplan", "apply")),
        (("rm", "-f", path), ("netplan", "apply")),
    )


PERSISTENT_BACKENDS = {"nmcli": plan_nmcli, "ifcfg": plan_ifcfg, "netplan": plan_netplan}


def backend_for(os_id: str, major: int | None, *, networkmanager: bool) -> str:
    """Which backend a distribution's own network configuration uses."""
    if os_id in ("centos", "rhel") and major == 7:
        return "ifcfg"
    if os_id == "ubuntu":
        return "netplan"
    if networkmanager or (major is not None and major >= 8 and os_id in _EL_IDS):
        return "nmcli"
    return "iproute2"


_EL_IDS = ("centos", "rhel", "rocky", "almalinux")
