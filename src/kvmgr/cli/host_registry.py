"""``kvmgr host add|list|remove|set``: the hosts kvmgr manages (kvmgr.control.hosts)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from kvmgr.cli.common import report_errors, state
from kvmgr.cli.output import OutputFormat, OutputOption, console, emit_object, emit_rows
from kvmgr.units import format_size

LabelsOption = typer.Option(
    "--labels", help="k=v,k2=v2 (replaces all labels; '' removes them)", show_default=False
)


class OnOff(str, Enum):
    on = "on"
    off = "off"


def add(
    name: Annotated[str, typer.Argument(help="name to use in --host, e.g. node1")],
    uri: Annotated[
        str,
        typer.Argument(
            help="qemu:///system, qemu+ssh://root@ADDR/system, qemu+tls://ADDR/system; "
            "ssh://root@ADDR with --setup"
        ),
    ],
    labels: Annotated[str | None, LabelsOption] = None,
    insecure_transport: Annotated[
        bool,
        typer.Option(
            "--insecure-transport",
            help="allow qemu+tcp:// (no encryption, no authentication of the daemon)",
        ),
    ] = False,
    setup: Annotated[
        bool,
        typer.Option(
            "--setup",
            help="first install and start libvirt there over ssh (URI ssh://root@ADDR; the "
            "host needs only sh, its package manager and systemd), then register it",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="with --setup: print the plan, change nothing")
    ] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Register a host after checking that its daemon answers and is not registered already."""
    from kvmgr.control.hosts import parse_labels

    parsed = parse_labels(labels)
    registry = state.hosts()
    if setup:
        from kvmgr.host.remote_setup import SshTarget, setup_over_ssh

        target = SshTarget.parse(uri)
        plan, steps = setup_over_ssh(target, dry_run=dry_run)
        verb = "would run" if dry_run else "ran"
        for step in steps:
            console.print(f"{verb}: {step.command_line()}", highlight=False, markup=False)
        if not steps:
            console.print(f"{plan.distribution}: nothing to install", highlight=False)
        if dry_run:
            return
        uri = target.libvirt_uri()
    record = registry.add(name, uri, labels=parsed, insecure_transport=insecure_transport)
    emit_object(record.as_dict(), output)


def list_cmd(output: OutputFormat = OutputOption) -> None:
    """Every host: up or down, versions, domain type, CPUs, memory, VMs (queried in parallel)."""
    registry = state.hosts()
    hosts = registry.all() or [registry.default()]
    rows = registry.statuses(hosts)
    if output.for_people:
        emit_rows([_people_row(row) for row in rows], output, _PEOPLE_COLUMNS)
        return
    if output in (OutputFormat.tsv, OutputFormat.csv):
        rows = [{**row, "labels": _labels(row["labels"])} for row in rows]
    emit_rows(rows, output, _SCRIPT_COLUMNS)


_PEOPLE_COLUMNS = ["name", "state", "uri", "libvirt", "qemu", "type", "cpus", "memory", "free"]
_PEOPLE_COLUMNS += ["vms", "labels"]
_SCRIPT_COLUMNS = ["name", "state", "uri", "libvirt", "hypervisor_version", "domain_type", "cpus"]
_SCRIPT_COLUMNS += ["memory_total", "memory_free", "vms_running", "vms_defined", "labels"]


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _people_row(row: dict[str, Any]) -> dict[str, Any]:
    """Sizes as "2.0 GiB", VMs as running/defined; ``-o wide`` adds the other keys as they are."""
    shown = {
        **row,
        "name": row["name"] + (" *" if row["default"] else ""),
        "labels": _labels(row["labels"]),
    }
    if row["reachable"]:
        shown.update(
            {
                "qemu": row["hypervisor_version"],
                "type": row["domain_type"],
                "memory": format_size(row["memory_total"]),
                "free": format_size(row["memory_free"]),
                "vms": f"{row['vms_running']}/{row['vms_defined']}",
            }
        )
    else:
        shown["libvirt"] = row["error"]  # the table says why, in the column versions would fill
    return shown


def info(name: str, output: OutputFormat) -> None:
    """``host info NAME``: the registry's record and what libvirt reports of the host."""
    from kvmgr.control.hosts import host_facts, host_identity
    from kvmgr.host.info import host_info

    registry = state.hosts()
    record = registry.get(name)
    conn = registry.connect(name)
    data: dict[str, Any] = {**record.as_dict(), "reachable": True}
    data.update(host_info(conn))
    facts = host_facts(conn)
    data.update({k: facts[k] for k in ("hypervisor_version", "vms_running", "vms_defined")})
    data["machine_identity"] = host_identity(conn)
    registry.seen([name])
    emit_object(data, output)


def remove(
    name: Annotated[str, typer.Argument(help="registered host")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="forget it even while VMs kvmgr made live there (they are not touched)",
        ),
    ] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Forget a host (its VMs and its daemon are left as they are)."""
    forgotten = state.hosts().remove(name, force=force)
    emit_object({"removed": name, "vms_forgotten": forgotten}, output)


def set_cmd(
    name: Annotated[str, typer.Argument(help="registered host")],
    labels: Annotated[str | None, LabelsOption] = None,
    maintenance: Annotated[
        OnOff | None, typer.Option("--maintenance", help="on: place nothing new there")
    ] = None,
    default: Annotated[
        bool | None,
        typer.Option(
            "--default/--no-default", help="the host commands act on when --host is not given"
        ),
    ] = None,
    output: OutputFormat = OutputOption,
) -> None:
    """Change a host's labels, maintenance flag, or make it the default."""
    from kvmgr.control.hosts import parse_labels

    record = state.hosts().set(
        name,
        labels=None if labels is None else parse_labels(labels),
        maintenance=None if maintenance is None else maintenance is OnOff.on,
        default=default,
    )
    emit_object(record.as_dict(), output)


def register(app: typer.Typer) -> None:
    app.command("add")(report_errors(add))
    app.command("list")(report_errors(list_cmd))
    app.command("remove")(report_errors(remove))
    app.command("set")(report_errors(set_cmd))
