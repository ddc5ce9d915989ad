"""``kvmgr snap``: snapshots of a VM.  Each command is one call into kvmgr.services.snapshots."""

from __future__ import annotations

from typing import Annotated

import typer

from kvmgr.cli.common import conn, journaled, report_errors
from kvmgr.cli.output import OutputFormat, OutputOption, console, emit_object, emit_rows
from kvmgr.services import snapshots

app = typer.Typer(no_args_is_help=True)

VMArg = Annotated[str, typer.Argument(help="VM name")]
SnapArg = Annotated[str, typer.Argument(help="snapshot name")]


@app.command()
@report_errors
def create(
    vm: VMArg,
    name: SnapArg,
    description: Annotated[str | None, typer.Option(help="free text shown by 'snap info'")] = None,
    live: Annotated[
        bool, typer.Option("--live", help="of a running VM, with its memory (internal)")
    ] = False,
    disk_only: Annotated[
        bool,
        typer.Option("--disk-only", help="external disk snapshot (raw disks, UEFI; no memory)"),
    ] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Take a snapshot: internal for qcow2 disks, external with --disk-only."""
    with journaled("snapshot create", f"{vm}/{name}", vms=(vm,)) as steps:
        info = snapshots.create_snapshot(
            conn(),
            vm,
            name,
            description=description,
            live=live,
            disk_only=disk_only,
            steps=steps,
        )
    emit_object(info.as_dict(), output)


@app.command("list")
@report_errors
def list_cmd(vm: VMArg, output: OutputFormat = OutputOption) -> None:
    """Show the snapshots as a tree; '*' marks the current one."""
    rows = [info.as_dict() for info in snapshots.list_snapshots(conn(), vm)]
    if output.for_people:
        for row in rows:
            row["name"] = "  " * row["depth"] + ("└ " if row["depth"] else "") + row["name"]
            row["current"] = "*" if row["current"] else ""
    emit_rows(rows, output, ["name", "current", "created", "state", "kind", "description"])


@app.command()
@report_errors
def info(vm: VMArg, name: SnapArg, output: OutputFormat = OutputOption) -> None:
    """Show one snapshot: parent, children, kind, state, disks."""
    emit_object(snapshots.snapshot_info(conn(), vm, name).as_dict(), output)


@app.command()
@report_errors
def revert(
    vm: VMArg,
    name: SnapArg,
    force: Annotated[
        bool, typer.Option("--force", help="revert a running VM (loses what it did since)")
    ] = False,
) -> None:
    """Bring the VM back to the snapshot; it ends in the snapshot's state."""
    with journaled("snapshot revert", f"{vm}/{name}", vms=(vm,)) as steps:
        info = snapshots.revert_snapshot(conn(), vm, name, force=force, steps=steps)
    console.print(f"{vm}: reverted to {info.name} ({info.state})")


@app.command()
@report_errors
def delete(
    vm: VMArg,
    name: SnapArg,
    children: Annotated[
        bool, typer.Option("--children", help="delete the snapshot's whole subtree")
    ] = False,
) -> None:
    """Delete a snapshot, merging its data where the VM still needs it."""
    with journaled("snapshot delete", f"{vm}/{name}", vms=(vm,)) as steps:
        removed = snapshots.delete_snapshot(conn(), vm, name, children=children, steps=steps)
    console.print(f"{vm}: deleted snapshot(s) {', '.join(removed)}")
