"""``kvmgr backup``: backup points of VMs, their repositories, verify and restore.

Each command is one call into :class:`kvmgr.control.backups.Backups` on the CLI's plane.
"""

from __future__ import annotations

from typing import Annotated

import typer

from kvmgr.cli.common import report_errors, state
from kvmgr.cli.output import OutputFormat, OutputOption, console, emit_object, emit_rows, status
from kvmgr.control.backups import Backups, check_point_input
from kvmgr.errors import InvalidInput
from kvmgr.services.backup.retention import Policy
from kvmgr.units import format_size

app = typer.Typer(no_args_is_help=True)
repo_app = typer.Typer(no_args_is_help=True)
app.add_typer(repo_app, name="repo", help="Backup repositories: a local directory or NFS mount.")

VMArg = Annotated[str, typer.Argument(help="VM name")]
PointArg = Annotated[str, typer.Argument(help="backup point id ('kvmgr backup list')")]
RepoOption = Annotated[
    str | None, typer.Option("--repo", help="repository name (default: the default one)")
]


def _backups() -> Backups:
    return Backups(state.plane())


@repo_app.command("add")
@report_errors
def repo_add(
    name: Annotated[str, typer.Argument(help="repository name")],
    path: Annotated[str, typer.Argument(help="absolute directory path (created if missing)")],
    default: Annotated[bool, typer.Option("--default", help="make it the default")] = False,
    compress: Annotated[
        bool,
        typer.Option(
            "--compress/--no-compress", help="zstd where it pays (fewer bytes, more CPU time)"
        ),
    ] = True,
    output: OutputFormat = OutputOption,
) -> None:
    """Register a repository (a new one, or one already on disk); the first is the default."""
    emit_object(_backups().add_repo(name, path, default=default, compress=compress), output)


@repo_app.command("list")
@report_errors
def repo_list(output: OutputFormat = OutputOption) -> None:
    """Show the repositories."""
    emit_rows(_backups().repos(), output, ["name", "path", "default", "compress"])


@app.command()
@report_errors
def create(
    vm: VMArg,
    full: Annotated[bool, typer.Option("--full", help="full even when an incremental could")] = (
        False
    ),
    repo: RepoOption = None,
    quiesce: Annotated[
        bool, typer.Option("--quiesce", help="freeze guest file systems (needs the guest agent)")
    ] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Back up a VM: full the first time, then only what changed (running or shut off)."""
    with status(f"backing up {vm}") as spinner:
        point = _backups().create(
            state.host_name(), vm, repo=repo, full=full, quiesce=quiesce, say=spinner.update
        )
    emit_object(point, output)


@app.command("list")
@report_errors
def list_cmd(
    vm: Annotated[str | None, typer.Argument(help="only this VM's points")] = None,
    repo: RepoOption = None,
    output: OutputFormat = OutputOption,
) -> None:
    """Show backup points and failed runs, oldest first."""
    rows = _backups().points(vm, repo=repo)
    if output.for_people:
        for row in rows:
            row["read"] = format_size(row["read"])
            row["stored"] = format_size(row["stored"])
            row["duration"] = f"{row['duration']:.1f}s"
    emit_rows(
        rows,
        output,
        ["id", "vm", "kind", "state", "consistency", "created", "duration", "read", "stored"],
    )


@app.command()
@report_errors
def verify(
    point: Annotated[str | None, typer.Argument(help="backup point id")] = None,
    every: Annotated[bool, typer.Option("--all", help="verify every point")] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Re-read every stored chunk and check its checksum, and the point's chain."""
    if (point is None) == (not every):
        raise InvalidInput("give a point id or --all", hint="'kvmgr backup list' shows points")
    with status("verifying"):
        verdicts = _backups().verify(check_point_input(point) if point else None)
    emit_rows(verdicts, output, ["point", "ok", "chunks", "bytes", "problems", "notes"])
    if not all(verdict["ok"] for verdict in verdicts):
        raise typer.Exit(1)


@app.command()
@report_errors
def restore(
    vm: VMArg,
    point: Annotated[
        str | None, typer.Option("--point", help="point id (default: the VM's newest good one)")
    ] = None,
    as_name: Annotated[
        str | None, typer.Option("--as", help="name of the new VM (default: the original's)")
    ] = None,
    pool: Annotated[str, typer.Option(help="storage pool for the restored disks")] = "default",
    start: Annotated[bool, typer.Option("--start", help="start the restored VM")] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Restore a point into a new VM; never overwrites an existing VM or volume."""
    backups = _backups()
    chosen = check_point_input(point) if point else backups.latest(vm)
    if backups.point(chosen)[0].vm_name != vm:
        raise InvalidInput(
            f"backup point {chosen} is not a point of VM {vm}",
            hint=f"'kvmgr backup list {vm}' shows its points",
        )
    with status(f"restoring {chosen}") as spinner:
        result = backups.restore(
            state.host_name(), chosen, as_name=as_name, pool=pool, start=start, say=spinner.update
        )
    emit_object(result, output)


@app.command()
@report_errors
def prune(
    vm: VMArg,
    keep_last: Annotated[int, typer.Option(help="keep the newest N points")] = 0,
    keep_daily: Annotated[int, typer.Option(help="keep the newest point of each of D days")] = 0,
    keep_weekly: Annotated[int, typer.Option(help="keep the newest point of each of W weeks")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only say what would go")] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Apply a retention policy now: delete the points it does not keep (never the newest)."""
    policy = Policy(keep_last, keep_daily, keep_weekly)
    emit_object(_backups().prune(vm, policy, dry_run=dry_run), output)


@app.command()
@report_errors
def delete(point: PointArg) -> None:
    """Delete a point; data that later points still need stays until they go too."""
    _backups().delete(check_point_input(point))
    console.print(f"deleted backup point {point}")
