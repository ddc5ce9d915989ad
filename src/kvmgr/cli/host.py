"""``kvmgr host``: check and set up this host."""

from __future__ import annotations

from typing import Annotated

import typer

from kvmgr.cli.common import conn, report_errors
from kvmgr.cli.host_daemons import app as daemons_app
from kvmgr.cli.output import OutputFormat, OutputOption, console, emit_object, emit_rows

app = typer.Typer(no_args_is_help=True)
app.add_typer(
    daemons_app, name="daemons", help="Start libvirtd/virtlogd where there is no systemd."
)

_STATUS_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}


@app.command("check")
@report_errors
def check(output: OutputFormat = OutputOption) -> None:
    """Check that this host can run VMs; exit status 1 when it cannot."""
    from kvmgr.host.checks import CheckContext, run_checks

    report = run_checks(CheckContext(connect=conn))
    rows = [
        {"check": r.name, "status": r.status.value, "detail": r.detail, "hint": r.hint}
        for r in report.results
    ]
    if output is OutputFormat.table:
        for row in rows:
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
    if output is not OutputFormat.table:
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
