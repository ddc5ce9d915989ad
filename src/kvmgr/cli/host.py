"""``kvmgr host``: the hosts kvmgr manages (add, list, set, remove: kvmgr.cli.host_registry), and
checking and setting up this host or the chosen one (check, setup, info, daemons, bridge)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kvmgr.cli import host_registry, vm_migrate
from kvmgr.cli.common import conn, report_errors
from kvmgr.cli.host_daemons import app as daemons_app
from kvmgr.cli.output import (
    OutputFormat,
    OutputOption,
    console,
    emit_object,
    emit_rows,
    err_console,
)
from kvmgr.errors import InvalidInput

app = typer.Typer(no_args_is_help=True)
host_registry.register(app)
vm_migrate.register_host(app)  # host evacuate
app.add_typer(
    daemons_app, name="daemons", help="Start libvirtd/virtlogd where there is no systemd."
)

_STATUS_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}


@app.command("check")
@report_errors
def check(output: OutputFormat = OutputOption) -> None:
    """Check that this host can run VMs; exit status 1 when it cannot."""
    from kvmgr.host.check_runner import CheckContext
    from kvmgr.host.checks import run_checks

    report = run_checks(CheckContext(connect=conn))
    rows = [
        {"check": r.name, "status": r.status.value, "detail": r.detail, "hint": r.hint}
        for r in report.results
    ]
    if output.for_people:
        # Colour only on a terminal: piped, the plain table prints cells as they are.
        for row in rows if sys.stdout.isatty() else []:
            style = _STATUS_STYLE[row["status"]]
            row["status"] = f"[{style}]{row['status']}[/]"
        emit_rows(rows, output, ["check", "status", "detail", "hint"])
        console.print(report.summary, highlight=False)
    else:
        emit_rows(
            [
                *rows,
                {
                    "check": "summary",
                    "status": "PASS" if report.can_run_vms else "FAIL",
                    "detail": report.summary,
                    "hint": "",
                },
            ],
            output,
            [],
        )
    if not report.can_run_vms:
        raise typer.Exit(1)


@app.command("setup")
@report_errors
def setup(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan (exact commands), change nothing")
    ] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Install and enable what this host lacks to run VMs (packages, libvirt daemons)."""
    from kvmgr.host import setup as host_setup

    plan = host_setup.build_plan(host_setup.gather_facts())
    steps = plan.steps if dry_run else tuple(host_setup.execute(plan))
    if not output.for_people:
        emit_object(
            {**plan.as_dict(), "dry_run": dry_run, "steps": [step.as_dict() for step in steps]},
            output,
        )
        return
    if not steps:
        console.print(
            f"{plan.distribution}: nothing to do, all is installed and running", highlight=False
        )
        return
    verb = "would run" if dry_run else "ran"
    console.print(f"{plan.distribution} ({plan.family}): {verb}", highlight=False)
    for step in steps:
        console.print(f"  # {step.title}\n  {step.command_line()}", highlight=False, markup=False)


bridge_app = typer.Typer(no_args_is_help=True)
host_registry.register(app)
app.add_typer(bridge_app, name="bridge", help="Host bridges: move an uplink onto a bridge, safely.")

NetnsOption = typer.Option(
    "--netns",
    help="work inside this named network namespace (default: the one libvirt's daemon runs in, "
    "where its guests' bridges must be)",
)
HostNetnsOption = typer.Option(
    "--host-netns", help="work in the host's own namespace even when libvirt's daemon is elsewhere"
)


def _netns(netns: str | None, host_netns: bool) -> str | None:
    """The namespace to work in: the one given, else the daemon's (said on stderr)."""
    if netns is not None or host_netns:
        if netns is not None and host_netns:
            raise InvalidInput("give --netns or --host-netns, not both")
        return netns
    from kvmgr.host.daemons import daemon_netns

    found = daemon_netns()
    if found is not None:
        err_console.print(
            f"working in network namespace {found!r}, where libvirt's daemon runs "
            "(--host-netns for the host's own)",
            highlight=False,
        )
    return found


DryRunOption = typer.Option("--dry-run", help="print the exact commands, change nothing")
YesOption = typer.Option("--yes", help="allow touching the interface with the default route")
RootOption = typer.Option(
    "--root", help="read and write configuration files under this directory (staging, tests)"
)


class BridgeBackend(str, Enum):
    auto = "auto"
    nmcli = "nmcli"
    ifcfg = "ifcfg"
    netplan = "netplan"
    iproute2 = "iproute2"


def _emit_bridge_result(data: dict[str, object], output: OutputFormat) -> None:
    if not output.for_people:
        emit_object(data, output)
        return
    files: dict[str, str | None] = data.get("files") or {}  # type: ignore[assignment]
    verb = "would" if data["dry_run"] else "did"
    console.print(f"backend: {data.get('backend', 'iproute2')}", highlight=False)
    for path, content in files.items():
        if content is None:
            console.print(f"{verb} remove {path}", highlight=False, markup=False)
            continue
        console.print(f"{verb} write {path}:", highlight=False, markup=False)
        console.print(content, end="", highlight=False, markup=False, soft_wrap=True)
    console.print(f"{verb} run:", highlight=False)
    for command in data["commands"]:  # type: ignore[attr-defined]
        console.print(f"  {command}", highlight=False, markup=False)
    for note in data["notes"]:  # type: ignore[attr-defined]
        console.print(f"note: {note}", highlight=False)


@bridge_app.command("create")
@report_errors
def bridge_create(
    name: Annotated[str, typer.Argument(help="bridge name, e.g. br0")],
    uplink: Annotated[str, typer.Option("--uplink", help="interface whose addresses move")],
    netns: Annotated[str | None, NetnsOption] = None,
    host_netns: Annotated[bool, HostNetnsOption] = False,
    dry_run: Annotated[bool, DryRunOption] = False,
    yes: Annotated[bool, YesOption] = False,
    ping: Annotated[
        str | None,
        typer.Option("--ping", help="address (e.g. the gateway) that must answer afterwards"),
    ] = None,
    backend: Annotated[
        BridgeBackend,
        typer.Option(
            "--backend",
            help="how to make the change; auto: what configures the uplink (netplan, "
            "NetworkManager, ifcfg files), else iproute2 (runtime only)",
        ),
    ] = BridgeBackend.auto,
    root: Annotated[Path, RootOption] = Path("/"),
    output: OutputFormat = OutputOption,
) -> None:
    """Create a bridge over UPLINK and move its addresses and routes; roll back on failure."""
    from kvmgr.host.bridge import create_bridge

    result = create_bridge(
        name,
        uplink,
        netns=_netns(netns, host_netns),
        yes=yes,
        dry_run=dry_run,
        ping=ping,
        backend=backend.value,
        root=root,
    )
    _emit_bridge_result(result.as_dict(), output)


@bridge_app.command("delete")
@report_errors
def bridge_delete(
    name: Annotated[str, typer.Argument(help="a bridge kvmgr created")],
    netns: Annotated[str | None, NetnsOption] = None,
    host_netns: Annotated[bool, HostNetnsOption] = False,
    dry_run: Annotated[bool, DryRunOption] = False,
    yes: Annotated[bool, YesOption] = False,
    root: Annotated[Path, RootOption] = Path("/"),
    output: OutputFormat = OutputOption,
) -> None:
    """Move a kvmgr bridge's addresses back to its uplink and delete the bridge."""
    from kvmgr.host.bridge import delete_bridge

    result = delete_bridge(
        name, netns=_netns(netns, host_netns), yes=yes, dry_run=dry_run, root=root
    )
    _emit_bridge_result(result.as_dict(), output)


@bridge_app.command("list")
@report_errors
def bridge_list(
    netns: Annotated[str | None, NetnsOption] = None,
    host_netns: Annotated[bool, HostNetnsOption] = False,
    root: Annotated[Path, RootOption] = Path("/"),
    output: OutputFormat = OutputOption,
) -> None:
    """List bridges with their ports and addresses."""
    from kvmgr.host.bridge import list_bridges

    emit_rows(
        list_bridges(netns=_netns(netns, host_netns), root=root),
        output,
        ["name", "state", "ports", "addresses", "kvmgr"],
    )


@app.command("info")
@report_errors
def info(
    name: Annotated[
        str | None, typer.Argument(help="registered host (default: the one --host/-c chose)")
    ] = None,
    output: OutputFormat = OutputOption,
) -> None:
    """CPU, topology, NUMA, memory, hugepages and guest support (machines, firmware, vCPUs)."""
    if name is not None:
        host_registry.info(name, output)
        return
    from kvmgr.host.info import host_info

    emit_object(host_info(conn()), output)
