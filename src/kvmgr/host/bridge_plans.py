"""Persistent host bridges, detection and plans: which tool the host uses for its network
(NetworkManager, CentOS 7 ifcfg files, Ubuntu netplan) and what kvmgr would change through it.

* **detection** (:func:`choose_backend`): a pure function of :class:`NetworkFacts` gathered from
  ``nmcli``, ``/etc/sysconfig/network-scripts`` and ``/etc/netplan``;
* **plans** (:class:`BackendPlan`): the files with their full content and the commands as argv,
  built from the host's own configuration of the uplink (so DNS, routes and DHCP settings move
  with the addresses), printed as they are by ``--dry-run``.

Carrying a plan out, with its backups and rollback, is :mod:`kvmgr.host.bridge_backends`.  Every
file path is taken relative to a ``root`` directory (``/`` on a real host) and every command goes
through one :class:`Runner`, so tests run them against a temporary tree.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kvmgr.errors import HostError, InvalidInput, InvalidState
from kvmgr.host import run as host_run
from kvmgr.host.bridge import BridgeSpec, plan_ifcfg, plan_netplan, plan_nmcli
from kvmgr.host.bridge_ip import Argv, Route

BACKENDS = ("auto", "nmcli", "ifcfg", "netplan", "iproute2")
IFCFG_DIR = "/etc/sysconfig/network-scripts"
NETPLAN_DIR = "/etc/netplan"
STATE_DIR = "/var/lib/kvmgr/bridges"  # backups and what kvmgr wrote, per bridge


# ----------------------------------------------------------------------------------- commands
class Runner:
    """Runs every command a backend needs: argv lists, a timeout each, never a shell."""

    def __init__(self, timeout: float = 90.0) -> None:
        self.timeout = timeout

    def __call__(self, argv: Argv, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return host_run.run(argv, timeout=self.timeout, check=check)

    def have(self, program: str) -> bool:
        return host_run.have(program)


def under(root: Path, path: str) -> Path:
    """``path`` (absolute on the target host) inside ``root``."""
    return root / path.lstrip("/")


# ----------------------------------------------------------------------------------- detection
@dataclass(frozen=True)
class NetworkFacts:
    """What decides the backend for one uplink."""

    uplink: str
    nm_running: bool = False
    nm_state: str | None = None  # NetworkManager's state of the uplink (None: not listed)
    nm_connection: str | None = None  # the connection active on the uplink
    ifcfg: bool = False  # /etc/sysconfig/network-scripts/ifcfg-UPLINK exists
    netplan_files: tuple[str, ...] = ()  # /etc/netplan files defining the uplink

    @property
    def nm_manages_uplink(self) -> bool:
        return self.nm_running and self.nm_state not in (None, "unmanaged")


def choose_backend(facts: NetworkFacts) -> str:
    """The backend that owns the uplink's configuration.

    netplan first: on Ubuntu it generates NetworkManager's or networkd's configuration, so an
    nmcli change would be overwritten by the next ``netplan apply``.  Then NetworkManager, which
    on EL 7-9 also reads ifcfg files (it writes them back itself).  ifcfg files with no
    NetworkManager managing the device are the CentOS 7 network service.  Otherwise nothing
    persistent owns the uplink and the runtime iproute2 change is the right one.
    """
    if facts.netplan_files:
        return "netplan"
    if facts.nm_manages_uplink:
        return "nmcli"
    if facts.ifcfg:
        return "ifcfg"
    return "iproute2"


def split_terse(line: str) -> list[str]:
    r"""One line of ``nmcli -t`` output: fields split at ``:``, with ``\:`` and ``\\`` unescaped."""
    fields, current, escaped = [], [], False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def gather_facts(uplink: str, *, root: Path, runner: Runner) -> NetworkFacts:
    nm_running, nm_state, nm_connection = False, None, None
    if runner.have("nmcli"):
        result = runner(("nmcli", "-t", "-f", "DEVICE,STATE,CONNECTION", "device"), check=False)
        nm_running = result.returncode == 0  # exit 8: "NetworkManager is not running"
        for line in result.stdout.splitlines() if nm_running else []:
            device, state, connection = [*split_terse(line), "", "", ""][:3]
            if device == uplink:
                nm_state, nm_connection = state, connection or None
    return NetworkFacts(
        uplink=uplink,
        nm_running=nm_running,
        nm_state=nm_state,
        nm_connection=nm_connection,
        ifcfg=under(root, f"{IFCFG_DIR}/ifcfg-{uplink}").is_file(),
        netplan_files=tuple(sorted(netplan_definitions(uplink, root))),
    )


# ----------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class BackendPlan:
    """Files to write (content None: remove), commands to bring them live, and to undo them.

    ``undo`` runs after the files are restored from their backups; ``undo_added`` maps a command
    of ``commands`` to the one that undoes it, for backends (nmcli) whose state is not files.
    """

    backend: str
    bridge: str
    uplink: str
    files: dict[str, str | None]
    commands: tuple[Argv, ...]
    undo: tuple[Argv, ...] = ()
    undo_added: tuple[tuple[Argv, Argv], ...] = ()
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "files": self.files,
            "commands": [list(c) for c in self.commands],
            "undo": [list(c) for c in self.undo],
            "undo_added": [[list(c), list(u)] for c, u in self.undo_added],
            "notes": list(self.notes),
        }


# -- ifcfg (CentOS 7 network-scripts)
# Keys that describe addressing: they move from the uplink's file to the bridge's.
_IFCFG_MOVED = re.compile(
    r"(IPADDR|PREFIX|NETMASK|GATEWAY|DNS|IPV6ADDR_SECONDARIES)\d*|BOOTPROTO|DEFROUTE|DOMAIN|"
    r"PEERDNS|PEERROUTES|IPV4_FAILURE_FATAL|IPV6INIT|IPV6_AUTOCONF|IPV6ADDR|IPV6_DEFAULTGW|"
    r"IPV6_DEFROUTE|IPV6_FAILURE_FATAL|IPV6_PEERDNS|IPV6_PEERROUTES|IPV6_PRIVACY|DHCP_HOSTNAME|"
    r"DHCPV6C|PERSISTENT_DHCLIENT|ZONE"
)
_IFCFG_KEY = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=")


def _ifcfg_key(line: str) -> str | None:
    match = _IFCFG_KEY.match(line)
    return match.group(1) if match else None


def _ifcfg_line(key: str, value: str) -> str:
    return f"{key}={shlex.quote(value)}\n"


def plan_ifcfg_files(spec: BridgeSpec, root: Path, *, nm: bool) -> BackendPlan:
    """ifcfg-BRIDGE takes the uplink file's addressing lines as they are; ifcfg-UPLINK keeps every
    other line (HWADDR, UUID, NAME, comments) and gains ``BRIDGE=``.  Static routes in
    route-UPLINK / route6-UPLINK move to route-BRIDGE / route6-BRIDGE.
    """
    uplink_path = f"{IFCFG_DIR}/ifcfg-{spec.uplink}"
    bridge_path = f"{IFCFG_DIR}/ifcfg-{spec.bridge}"
    live = _ifcfg_live(spec, nm=nm)
    if not under(root, uplink_path).is_file():
        fallback = plan_ifcfg(spec)  # no file to take settings from: the runtime addresses
        return BackendPlan(
            "ifcfg",
            spec.bridge,
            spec.uplink,
            dict(fallback.files),
            live,
            ifcfg_undo(spec, nm=nm),
            notes=(f"{uplink_path} does not exist: addresses taken from the running interface",),
        )
    kept: list[str] = []
    moved: list[str] = []
    for line in under(root, uplink_path).read_text().splitlines(keepends=True):
        key = _ifcfg_key(line)
        if key == "BRIDGE":
            raise InvalidState(f"{uplink_path} already names a bridge: {line.strip()}")
        (moved if key and _IFCFG_MOVED.fullmatch(key) else kept).append(line)
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    bridge_lines = [
        _ifcfg_line(k, v)
        for k, v in (
            ("DEVICE", spec.bridge),
            ("NAME", spec.bridge),
            ("TYPE", "Bridge"),
            ("ONBOOT", "yes"),
            ("DELAY", "0"),
            ("STP", "no"),
            ("MACADDR", spec.mac),  # the uplink's MAC keeps DHCP leases and neighbours' caches
        )
    ]
    bridge_lines += [line if line.endswith("\n") else line + "\n" for line in moved]
    files: dict[str, str | None] = {
        bridge_path: "".join(bridge_lines),
        uplink_path: "".join(kept)
        + _ifcfg_line("BOOTPROTO", "none")
        + _ifcfg_line("BRIDGE", spec.bridge),
    }
    for kind in ("route", "route6"):
        routes = under(root, f"{IFCFG_DIR}/{kind}-{spec.uplink}")
        if routes.is_file():
            files[f"{IFCFG_DIR}/{kind}-{spec.bridge}"] = _rename_dev(
                routes.read_text(), spec.uplink, spec.bridge
            )
            files[f"{IFCFG_DIR}/{kind}-{spec.uplink}"] = None
    return BackendPlan("ifcfg", spec.bridge, spec.uplink, files, live, ifcfg_undo(spec, nm=nm))


def _rename_dev(text: str, old: str, new: str) -> str:
    """route-IFACE lines may name the device (``... dev eth0``): it becomes the bridge."""
    return re.sub(rf"(\bdev\s+){re.escape(old)}\b", rf"\g<1>{new}", text)


def _ifcfg_live(spec: BridgeSpec, *, nm: bool) -> tuple[Argv, ...]:
    if nm:  # EL 7 with NetworkManager reading the ifcfg files (its ifcfg-rh plugin)
        return (
            ("nmcli", "connection", "reload"),
            ("nmcli", "connection", "up", "ifname", spec.bridge),
            ("nmcli", "connection", "up", "ifname", spec.uplink),
        )
    return (("ifdown", spec.uplink), ("ifup", spec.uplink), ("ifup", spec.bridge))


def ifcfg_undo(spec: BridgeSpec, *, nm: bool) -> tuple[Argv, ...]:
    # Runs once the bridge link is deleted (ifdown of a bridge whose file is gone does nothing).
    if nm:
        return (
            ("nmcli", "connection", "reload"),
            ("nmcli", "connection", "up", "ifname", spec.uplink),
        )
    return (("ifup", spec.uplink),)


# -- netplan (Ubuntu)
_NETPLAN_TYPES = ("ethernets", "bonds", "vlans")
# Settings of the uplink's own addressing: they move to the bridge.  Everything else (match,
# set-name, mtu, wakeonlan, optional...) stays with the uplink.
_NETPLAN_MOVED = (
    "dhcp4",
    "dhcp6",
    "dhcp4-overrides",
    "dhcp6-overrides",
    "dhcp-identifier",
    "accept-ra",
    "addresses",
    "gateway4",
    "gateway6",
    "routes",
    "routing-policy",
    "nameservers",
    "ipv6-privacy",
    "link-local",
)


def _netplan_load(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise HostError(
            f"{path} is not valid YAML: {err}", hint="fix it (netplan cannot read it either)"
        ) from err
    if not isinstance(document, dict):
        raise HostError(f"{path} does not hold a netplan mapping")
    return document


def _uplink_entry(document: dict[str, Any], uplink: str) -> dict[str, Any] | None:
    network = document.get("network") or {}
    for kind in _NETPLAN_TYPES:
        devices = network.get(kind) or {}
        for name, entry in devices.items():
            if name == uplink or (isinstance(entry, dict) and entry.get("set-name") == uplink):
                return entry if isinstance(entry, dict) else {}
    return None


def _netplan_id(document: dict[str, Any], uplink: str) -> str:
    """The netplan id of the uplink (differs from the interface name when ``set-name`` is used)."""
    network = document.get("network") or {}
    for kind in _NETPLAN_TYPES:
        for name, entry in (network.get(kind) or {}).items():
            if name == uplink or (isinstance(entry, dict) and entry.get("set-name") == uplink):
                return str(name)
    return uplink


def netplan_definitions(uplink: str, root: Path) -> list[str]:
    """/etc/netplan files that define the uplink (kvmgr's own bridge files excluded)."""
    directory = under(root, NETPLAN_DIR)
    found = []
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        if path.name.startswith("90-kvmgr-"):
            continue
        if _uplink_entry(_netplan_load(path), uplink) is not None:
            found.append(f"{NETPLAN_DIR}/{path.name}")
    return found


def netplan_path(bridge: str) -> str:
    return f"{NETPLAN_DIR}/90-kvmgr-{bridge}.yaml"


def _dump(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def plan_netplan_files(spec: BridgeSpec, root: Path) -> BackendPlan:
    """A new 90-kvmgr-BRIDGE.yaml holds the bridge with the uplink's addressing settings.

    netplan merges files, but lists such as ``addresses`` from an earlier file cannot be taken
    away by a later one, so the addressing settings are removed from the uplink's entry in the
    file that defines it (the least change that is correct).  Only files whose uplink entry has
    such settings are rewritten; they lose their comments, and the backup keeps the original.
    """
    command: tuple[Argv, ...] = (("netplan", "generate"), ("netplan", "apply"))
    sources = netplan_definitions(spec.uplink, root)
    if not sources:
        fallback = plan_netplan(spec)
        return BackendPlan(
            "netplan",
            spec.bridge,
            spec.uplink,
            dict(fallback.files),
            command,
            (("netplan", "apply"),),
            notes=(f"no file in {NETPLAN_DIR} defines {spec.uplink}: addresses taken from it",),
        )
    files: dict[str, str | None] = {}
    moved: dict[str, Any] = {}
    netplan_id = spec.uplink
    notes = []
    for source in sources:
        document = _netplan_load(under(root, source))
        entry = _uplink_entry(document, spec.uplink)
        assert entry is not None  # netplan_definitions found it
        netplan_id = _netplan_id(document, spec.uplink)
        taken = {key: entry.pop(key) for key in _NETPLAN_MOVED if key in entry}
        for key, value in taken.items():  # later files win, lists add up, as netplan merges
            if isinstance(value, list) and isinstance(moved.get(key), list):
                moved[key] = moved[key] + value
            else:
                moved[key] = value
        if taken:
            files[source] = _dump(document)
            notes.append(f"{source}: {', '.join(taken)} of {netplan_id} move to {spec.bridge}")
    bridge: dict[str, Any] = {
        "interfaces": [netplan_id],
        "macaddress": spec.mac,
        "parameters": {"stp": False, "forward-delay": 0},
        **moved,
    }
    document = {"network": {"version": 2, "bridges": {spec.bridge: bridge}}}
    return BackendPlan(
        "netplan",
        spec.bridge,
        spec.uplink,
        {netplan_path(spec.bridge): _dump(document), **files},
        command,
        (("netplan", "apply"),),
        notes=tuple(notes),
    )


# -- nmcli (NetworkManager)
# Settings copied from the uplink's connection to the bridge's (with ``nmcli -t -f``).
_NM_SETTINGS = (
    "ipv4.method",
    "ipv4.addresses",
    "ipv4.gateway",
    "ipv4.routes",
    "ipv4.dns",
    "ipv4.dns-search",
    "ipv6.method",
    "ipv6.addresses",
    "ipv6.gateway",
    "ipv6.routes",
    "ipv6.dns",
    "ipv6.dns-search",
)


def read_nm_settings(connection: str, runner: Runner) -> dict[str, str]:
    """The IP settings of an existing connection (empty values left out)."""
    fields = ",".join((*_NM_SETTINGS, "connection.autoconnect"))
    result = runner(("nmcli", "-t", "-f", fields, "connection", "show", connection))
    settings = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        value = "".join(split_terse(value)) if "\\" in value else value
        if key in (*_NM_SETTINGS, "connection.autoconnect") and value not in ("", "--"):
            settings[key] = value
    return settings


def route_metrics(routes: tuple[Route, ...] | list[Route]) -> tuple[str, ...]:
    """``ipv4.route-metric``/``ipv6.route-metric`` settings that keep the uplink's metrics.

    NetworkManager gives a bridge the metric of its device type (425), not the ethernet one the
    uplink had (100): the bridge's default route would lose to any other route it used to beat,
    and the check that the routes moved unchanged fails (the real NetworkManager showed both).
    The default route's metric decides; without one, the first route's of that family.
    """
    settings: list[str] = []
    for family, key in (("inet", "ipv4.route-metric"), ("inet6", "ipv6.route-metric")):
        ours = [r for r in routes if r.family == family and r.metric is not None]
        ours.sort(key=lambda r: r.dst != "default")
        if ours:
            settings += [key, str(ours[0].metric)]
    return tuple(settings)


def plan_nmcli_connections(
    spec: BridgeSpec,
    old_connection: str | None,
    settings: Mapping[str, str],
    routes: tuple[Route, ...] | list[Route] = (),
) -> BackendPlan:
    """A bridge connection with the old connection's IP settings (and the metrics of the uplink's
    ``routes``), a port connection for the uplink, both brought up; the old connection stops
    autoconnecting so the port wins at boot.
    """
    base = plan_nmcli(spec)
    add_bridge, add_port, _ = base.commands
    port_con = add_port[add_port.index("con-name") + 1]
    if settings:  # the old connection's own settings, not what DHCP happened to hand out
        cut = add_bridge.index("bridge.mac-address") + 2
        ip_settings = tuple(
            part for key in _NM_SETTINGS if key in settings for part in (key, settings[key])
        )
        add_bridge = (*add_bridge[:cut], *ip_settings)
    add_bridge = (*add_bridge, *route_metrics(routes))
    commands: list[Argv] = [add_bridge, add_port]
    undo_added: list[tuple[Argv, Argv]] = [
        (add_bridge, ("nmcli", "connection", "delete", spec.bridge)),
        (add_port, ("nmcli", "connection", "delete", port_con)),
    ]
    # Before anything comes up: a real NetworkManager otherwise reconnects the uplink with its
    # old profile the moment the port lets go of it, and the bridge is left without a port.
    if old_connection is not None and settings.get("connection.autoconnect") == "yes":
        no_auto: Argv = ("nmcli", "connection", "modify", old_connection)
        commands.append((*no_auto, "connection.autoconnect", "no"))
        undo_added.append((commands[-1], (*no_auto, "connection.autoconnect", "yes")))
    # The bridge first, then its port: activating the bridge after the port (which already
    # brought the bridge up as its master) re-activates it and detaches the port again; the
    # real NetworkManager did exactly that, the scripted stand-in never could.
    commands += [
        ("nmcli", "connection", "up", spec.bridge),
        ("nmcli", "connection", "up", port_con),
    ]
    reactivate: Argv = (
        ("nmcli", "connection", "up", old_connection)
        if old_connection
        else ("nmcli", "device", "connect", spec.uplink)
    )
    return BackendPlan(
        "nmcli",
        spec.bridge,
        spec.uplink,
        {},
        tuple(commands),
        (reactivate,),
        tuple(undo_added),
    )


def build_plan(
    backend: str,
    spec: BridgeSpec,
    facts: NetworkFacts,
    *,
    root: Path,
    runner: Runner,
    routes: tuple[Route, ...] | list[Route] = (),
) -> BackendPlan:
    if backend == "ifcfg":
        return plan_ifcfg_files(spec, root, nm=facts.nm_manages_uplink)
    if backend == "netplan":
        return plan_netplan_files(spec, root)
    if backend == "nmcli":
        if not facts.nm_running:
            raise InvalidState(
                "NetworkManager is not running on this host",
                hint="start it, or choose another --backend (auto picks what the host uses)",
            )
        settings = read_nm_settings(facts.nm_connection, runner) if facts.nm_connection else {}
        return plan_nmcli_connections(spec, facts.nm_connection, settings, routes)
    raise InvalidInput(f"unknown bridge backend {backend!r}", hint=f"use one of {BACKENDS}")
