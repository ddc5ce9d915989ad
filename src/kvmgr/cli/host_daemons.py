"""``kvmgr host daemons``: start, stop and show libvirt's daemons where there is no systemd."""

from __future__ import annotations

from typing import Annotated

import typer

from kvmgr.cli.common import report_errors
from kvmgr.cli.output import OutputFormat, OutputOption, emit_object, emit_rows, err_console

app = typer.Typer(no_args_is_help=True)


@app.command("start")
@report_errors
def start_command(
    netns: Annotated[
        str, typer.Option("--netns", help="network namespace libvirtd runs in (no systemd)")
    ] = "kvmgr",
    output: OutputFormat = OutputOption,
) -> None:
    """Start virtlogd and libvirtd unless a libvirt daemon already answers."""
    from kvmgr.host import daemons

    report = daemons.start(netns)
    if report.did_nothing and output.for_people:
        err_console.print(f"libvirt {report.version} already answers on {daemons.SYSTEM_URI}")
        return
    emit_object(
        {
            "netns": report.netns,
            "libvirt": report.version,
            "steps": [
                {"action": step.action.value, "target": step.target, "note": step.reason}
                for step in report.steps
            ],
        },
        output,
    )


@app.command("stop")
@report_errors
def stop_command(output: OutputFormat = OutputOption) -> None:
    """Stop the daemons kvmgr started; daemons started otherwise are left alone."""
    from kvmgr.host import daemons

    steps = daemons.stop()
    rows = [{"daemon": s.target, "action": s.action.value, "note": s.reason} for s in steps]
    if not rows and output.for_people:
        err_console.print("kvmgr started no daemons; nothing to stop")
        return
    emit_rows(rows, output, ["daemon", "action", "note"])


@app.command("status")
@report_errors
def status_command(output: OutputFormat = OutputOption) -> None:
    """Show which libvirt daemons run, in which namespace, and the libvirt version."""
    from kvmgr.host import daemons

    found = daemons.status()
    emit_object(
        {
            "answers": found.answers,
            "libvirt": found.version,
            "daemons": [
                {
                    "name": d.name,
                    "pid": d.pid,
                    "netns": d.netns or "host",
                    "started_by_kvmgr": d.pid in found.started_by_kvmgr,
                }
                for d in found.daemons
            ],
        },
        output,
    )
