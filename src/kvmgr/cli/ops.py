"""``kvmgr ops``: the journaled operations in the database, and recovery of what dead kvmgr
processes left (every CLI command, ``kvmgr serve`` and workers also recover when they open it)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kvmgr.cli.common import report_errors, state
from kvmgr.cli.output import OutputFormat, OutputOption, console, emit_rows
from kvmgr.control.leases import when

app = typer.Typer(no_args_is_help=True)


@app.command("list")
@report_errors
def list_cmd(
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="also operations that simply finished")
    ] = False,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 200,
    output: OutputFormat = OutputOption,
) -> None:
    """Operations newest first: running, failed, undone or recovered ones (all with --all)."""
    rows: list[dict[str, Any]] = []
    for op in state.plane().operations(include_done=all_, limit=limit):
        row = op.__dict__.copy()
        finished = op.finished
        if output.for_people:
            row["id"] = op.id[:8]
            row["created"] = when(op.created)
            row["finished"] = when(finished) if finished else None
        else:
            row["created"] = op.created.isoformat()
            row["finished"] = finished.isoformat() if finished else None
        rows.append(row)
    emit_rows(
        rows,
        output,
        ["id", "kind", "target", "host", "actor", "state", "created", "message"],
        wide=["finished", "error"],
    )


@app.command()
@report_errors
def recover(
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="also retry recoveries that failed before")
    ] = False,
) -> None:
    """Finish or undo now every operation whose process is gone, and say what was done."""
    plane = state.plane(recover=False)
    outcomes = plane.recover(retry_failed=retry_failed)
    for outcome in outcomes:
        console.print(f"{outcome.state}: {outcome.line()}", highlight=False)
    if not outcomes:
        console.print("nothing to recover")
