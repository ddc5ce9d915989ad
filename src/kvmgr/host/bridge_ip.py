"""iproute2 for host bridges: an interface's state read with ``ip -j`` and the ``ip`` steps.

What lives here: :class:`LinkState` (an interface's addresses and routes, what rollback restores),
:class:`Ip` (``ip`` run in a named network namespace or the host's own; reading state uses
``ip -j``, so no parsing of text), the plans that move addresses and routes between an uplink and
a bridge (:func:`plan_create`, :func:`plan_delete`, :func:`plan_restore`) and :func:`differences`.
Nothing here decides whether to move: :mod:`kvmgr.host.bridge` checks, carries out, verifies and
rolls back.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmgr.errors import InvalidInput, NotFound
from kvmgr.host.run import run
from kvmgr.names import validate_name

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
