"""Host bridges: move an uplink's addresses onto a new bridge, with verification and rollback.

Four backends, chosen by what the host uses to configure its network:

* **iproute2** (runtime, no persistence): the one carried out here, by ``ip`` commands, optionally
  inside a named network namespace.  Reading state uses ``ip -j`` (JSON), so no parsing of text.
* **nmcli** (NetworkManager: EL 8/9), **ifcfg** (network-scripts: CentOS 7), **netplan** (Ubuntu):
  the change made through the host's own network configuration, so it persists; detection,
  plans from the host's files and their executors live in :mod:`kvmgr.host.bridge_backends`
  (``backend="auto"`` picks the one the host uses).

Safety: before changing anything kvmgr records the uplink's addresses and routes
(:class:`LinkState`).  After the move it checks the bridge holds every address and the default
route (and, when asked, that an address such as the gateway answers a ping).  Any failure restores
the recorded state exactly.  A bridge kvmgr creates carries an alias naming its uplink; kvmgr only
deletes bridges carrying that mark.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kvmgr.errors import AlreadyExists, HostError, InvalidInput, InvalidState, NotFound
from kvmgr.host.run import run
from kvmgr.names import validate_name

if TYPE_CHECKING:
    from kvmgr.host.bridge_backends import Settle
    from kvmgr.host.bridge_plans import Runner

IFNAMSIZ = 15  # Linux interface names are at most 15 bytes
ALIAS_PREFIX = "kvmgr-bridge uplink="
NETNS_DIR = Path("/run/netns")

Argv = tuple[str, ...]


def validate_ifname(name: str, *, what: str = "interface name") -> str:
    validate_name(name, what=what)
    if len(name) > IFNAMSIZ:
        raise InvalidInput(
            f"{what} {name!r} is longer than {IFNAMSIZ} characters",
            hint="Linux interface names are at most 15 characters",
        )
    return name


# ----------------------------------------------------------------------------------- state
@dataclass(frozen=True)
class Address:
    family: str  # inet or inet6
    cidr: str  # 10.0.0.5/24
    broadcast: str | None = None
    dynamic: bool = False  # handed out by DHCP/SLAAC

    def add_args(self, dev: str) -> Argv:
        extra: Argv = ("brd", self.broadcast) if self.broadcast else ()
        nodad: Argv = ("nodad",) if self.family == "inet6" else ()  # no 1-2 s of tentative state
        return ("address", "add", self.cidr, *extra, "dev", dev, *nodad)

    def del_args(self, dev: str) -> Argv:
        return ("address", "del", self.cidr, "dev", dev)


@dataclass(frozen=True)
class Route:
    family: str
    dst: str  # "default" or a prefix
    gateway: str | None = None
    metric: int | None = None
    protocol: str | None = None
    scope: str | None = None
    prefsrc: str | None = None

    def replace_args(self, dev: str) -> Argv:
        """``ip route replace`` moves a route with the same destination and metric to ``dev``."""
        args: list[str] = ["-6"] if self.family == "inet6" else []
        args += ["route", "replace", self.dst]
        if self.gateway:
            args += ["via", self.gateway]
        args += ["dev", dev]
        for key, value in (
            ("metric", self.metric),
            ("proto", self.protocol),
            ("scope", self.scope),
            ("src", self.prefsrc),
        ):
            if value is not None:
                args += [key, str(value)]
        return tuple(args)


@dataclass(frozen=True)
class LinkState:
    """What rollback restores: an interface's addresses and routes (kernel-made ones excluded)."""

    name: str
    mac: str
    up: bool
    master: str | None
    kind: str | None
    alias: str | None
    addresses: tuple[Address, ...] = ()
    routes: tuple[Route, ...] = ()

    @property
    def default_route(self) -> Route | None:
        return next((r for r in self.routes if r.dst == "default" and r.family == "inet"), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mac": self.mac,
            "up": self.up,
            "master": self.master,
            "addresses": [a.cidr for a in self.addresses],
            "routes": [" ".join(r.replace_args("DEV")[2:]) for r in self.routes],
        }


class Ip:
    """``ip`` inside a network namespace (or the host's own when ``netns`` is None)."""

    def __init__(self, netns: str | None = None) -> None:
        if netns is not None:
            validate_name(netns, what="network namespace")
            if not (NETNS_DIR / netns).exists():
                raise NotFound(
                    f"network namespace {netns!r} does not exist",
                    hint="list them with 'ip netns list'",
                )
        self.netns = netns

    def argv(self, args: Argv) -> Argv:
        return ("ip", "-n", self.netns, *args) if self.netns else ("ip", *args)

    def run(self, args: Argv) -> None:
        run(self.argv(args), timeout=15)

    def json(self, *args: str) -> list[dict[str, Any]]:
        result = run(("ip", "-j", *self.argv(args)[1:]), timeout=15, check=False)
        if result.returncode != 0:
            return []  # e.g. "Device does not exist": callers treat it as "no such link"
        data: list[dict[str, Any]] = json.loads(result.stdout or "[]")
        return data

    def link_exists(self, name: str) -> bool:
        return bool(self.json("link", "show", "dev", name))

    def read(self, name: str) -> LinkState:
        """The interface's current state; :class:`NotFound` when it does not exist."""
        links = self.json("-d", "address", "show", "dev", name)
        if not links:
            where = f" in network namespace {self.netns}" if self.netns else ""
            raise NotFound(
                f"interface {name!r} does not exist{where}",
                hint=f"list interfaces with '{shlex.join(self.argv(('link',)))}'"
                + (
                    f"; an interface of another namespace moves here with 'ip link set {name} "
                    f"netns {self.netns}' (or choose the namespace: --netns, --host-netns)"
                    if self.netns
                    else ""
                ),
            )
        link = links[0]
        return LinkState(
            name=name,
            mac=link.get("address", ""),
            up="UP" in link.get("flags", []),
            master=link.get("master"),
            kind=link.get("linkinfo", {}).get("info_kind"),
            alias=link.get("ifalias"),
            addresses=tuple(_addresses(link)),
            routes=tuple(self._routes(name)),
        )

    def _routes(self, dev: str) -> list[Route]:
        routes = []
        for family, flag in (("inet", "-4"), ("inet6", "-6")):
            for entry in self.json(flag, "route", "show", "dev", dev):
                if entry.get("protocol") == "kernel" or entry.get("type") == "multicast":
                    continue  # the kernel recreates these from the addresses
                routes.append(
                    Route(
                        family=family,
                        dst=entry["dst"],
                        gateway=entry.get("gateway"),
                        metric=entry.get("metric"),
                        protocol=entry.get("protocol"),
                        scope=entry.get("scope"),
                        prefsrc=entry.get("prefsrc"),
                    )
                )
        return routes

    def bridges(self) -> list[dict[str, Any]]:
        return self.json("-d", "link", "show", "type", "bridge")

    def ports(self, bridge: str) -> list[str]:
        return [link["ifname"] for link in self.json("link", "show", "master", bridge)]


def _addresses(link: dict[str, Any]) -> list[Address]:
    found = []
    for info in link.get("addr_info", []):
        if info.get("scope") == "link" and info.get("family") == "inet6":
            continue  # fe80:: addresses belong to the interface itself, the kernel makes them
        found.append(
            Address(
                family=info["family"],
                cidr=f"{info['local']}/{info['prefixlen']}",
                broadcast=info.get("broadcast"),
                dynamic=bool(info.get("dynamic")),
            )
        )
    return found


# ----------------------------------------------------------------------------------- plans
def plan_create(uplink: LinkState, bridge: str) -> list[Argv]:
    """``ip`` arguments that create ``bridge`` and move ``uplink``'s addresses and routes to it."""
    steps: list[Argv] = [
        ("link", "add", "name", bridge, "type", "bridge"),
        # The uplink's MAC keeps DHCP leases and neighbours' ARP caches valid.
        ("link", "set", "dev", bridge, "address", uplink.mac),
        ("link", "set", "dev", bridge, "alias", f"{ALIAS_PREFIX}{uplink.name}"),
        ("link", "set", "dev", uplink.name, "master", bridge),
        ("link", "set", "dev", bridge, "up"),
    ]
    return steps + _move(uplink, bridge)


def _move(source: LinkState, target: str) -> list[Argv]:
    steps: list[Argv] = []
    for address in source.addresses:
        steps += [address.del_args(source.name), address.add_args(target)]
    steps += [route.replace_args(target) for route in source.routes]
    return steps


def plan_delete(bridge: LinkState, uplink: str) -> list[Argv]:
    """Move the bridge's addresses and routes back to ``uplink``, then delete the bridge."""
    steps: list[Argv] = [
        ("link", "set", "dev", uplink, "nomaster"),
        ("link", "set", "dev", uplink, "up"),
    ]
    return [*steps, *_move(bridge, uplink), ("link", "del", "dev", bridge.name)]


def plan_restore(expected: LinkState, ip: Ip) -> list[Argv]:
    """What puts ``expected.name`` back to ``expected``: missing addresses and routes re-added."""
    current = ip.read(expected.name)
    steps: list[Argv] = []
    if current.master != expected.master:
        master: Argv = ("master", expected.master) if expected.master else ("nomaster",)
        steps.append(("link", "set", "dev", expected.name, *master))
    if expected.up and not current.up:
        steps.append(("link", "set", "dev", expected.name, "up"))
    have = {a.cidr for a in current.addresses}
    want = {a.cidr for a in expected.addresses}
    steps += [a.del_args(expected.name) for a in current.addresses if a.cidr not in want]
    steps += [a.add_args(expected.name) for a in expected.addresses if a.cidr not in have]
    steps += [r.replace_args(expected.name) for r in expected.routes if r not in current.routes]
    return steps


def differences(expected: LinkState, actual: LinkState) -> list[str]:
    """What differs between two states of the same interface (empty when restored exactly)."""
    diffs = []
    for label, want, have in (
        ("addresses", {a.cidr for a in expected.addresses}, {a.cidr for a in actual.addresses}),
        ("routes", set(expected.routes), set(actual.routes)),
    ):
        if missing := want - have:
            diffs.append(f"missing {label}: {', '.join(sorted(map(str, missing)))}")
        if extra := have - want:
            diffs.append(f"unexpected {label}: {', '.join(sorted(map(str, extra)))}")
    if expected.master != actual.master:
        diffs.append(f"master is {actual.master}, expected {expected.master}")
    if expected.up != actual.up:
        diffs.append(f"link is {'up' if actual.up else 'down'}")
    return diffs


# ----------------------------------------------------------------------------------- carrying out
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
