"""``kvmgr backup``: backup points of VMs, their repositories, verify and restore.

Each command is one call into :class:`kvmgr.control.backups.Backups` on the CLI's plane.
"""

from __future__ import annotations

from typing import Annotated

import typer
from typer import _click as click  # Typer vendors click; its groups take these types
from typer.core import TyperGroup

from kvmgr.cli.common import report_errors, state
from kvmgr.cli.output import OutputFormat, OutputOption, console, emit_object, emit_rows, status
from kvmgr.control import backup_policies
from kvmgr.control.authz import cli_principal
from kvmgr.control.backup_schedules import Schedules, scheduled_points
from kvmgr.control.backups import Backups, check_point_input
from kvmgr.errors import InvalidInput
from kvmgr.services.backup.retention import Policy
from kvmgr.units import format_size


class _DefaultAdd(TyperGroup):
    """``backup schedule VM ...`` is ``backup schedule add VM ...`` (and ``policy`` likewise):
    a first word that names no subcommand is the VM.  A VM called ``list`` needs ``add list``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)

    default = "add"


class _DefaultSet(_DefaultAdd):
    default = "set"


app = typer.Typer(no_args_is_help=True)
repo_app = typer.Typer(no_args_is_help=True)
app.add_typer(repo_app, name="repo", help="Backup repositories: a local directory or NFS mount.")
schedule_app = typer.Typer(no_args_is_help=True, cls=_DefaultAdd)
app.add_typer(
    schedule_app,
    name="schedule",
    help="Backups run by the workers: 'schedule VM|--all --every 1d --at 02:00', list, remove.",
)
policy_app = typer.Typer(no_args_is_help=True, cls=_DefaultSet)
app.add_typer(
    policy_app,
    name="policy",
    help="Retention applied after every backup: 'policy VM --keep-last N ...', list, remove.",
)

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
    """Show backup points and failed runs (why, in 'error'), oldest first; 'by' says which
    schedule took a point ('-': by hand)."""
    backups = _backups()
    rows = backups.points(vm, repo=repo)
    by = scheduled_points(backups.plane.store)
    for row in rows:
        row["by"] = f"schedule {by[row['id']]}" if row["id"] in by else "-"
    if output.for_people:
        for row in rows:
            row["read"] = format_size(row["read"])
            row["stored"] = format_size(row["stored"])
            row["duration"] = f"{row['duration']:.1f}s"
            row["error"] = _short(row["error"] or "")
    columns = ["id", "vm", "kind", "state", "consistency", "created", "duration", "read"]
    emit_rows(rows, output, [*columns, "stored", "by", "error"])


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "\N{HORIZONTAL ELLIPSIS}"


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


# ---------------------------------------------------------------------- schedules
OptionalVM = Annotated[str | None, typer.Argument(help="VM name (or --all)", show_default=False)]
AllOption = Annotated[
    bool, typer.Option("--all", help="every VM of the host (less those with their own schedule)")
]


def _target(vm: str | None, every_vm: bool) -> str | None:
    if (vm is None) == (not every_vm):
        raise InvalidInput(
            "give a VM name or --all", hint="e.g. 'kvmgr backup schedule web1 --every 1d'"
        )
    return vm


@schedule_app.command("add")
@report_errors
def schedule_add(
    vm: OptionalVM = None,
    every_vm: AllOption = False,
    every: Annotated[
        str, typer.Option("--every", help="interval: 30m, 6h, 1d, 1w (at least 10s)")
    ] = "1d",
    at: Annotated[
        str | None,
        typer.Option("--at", help="time of day, HH:MM (UTC, or --tz's zone; whole-day --every)"),
    ] = None,
    tz: Annotated[
        str | None,
        typer.Option("--tz", help="IANA time zone of --at, e.g. Europe/Paris (default UTC)"),
    ] = None,
    repo: RepoOption = None,
    output: OutputFormat = OutputOption,
) -> None:
    """Back up VM (or --all) in every window; a window missed while no worker ran runs once."""
    target = _target(vm, every_vm)
    made = Schedules(state.plane()).add(
        state.host_name(), target, every=every, at=at, tz=tz, repo=repo, who=cli_principal()
    )
    emit_object(made, output)


@schedule_app.command("list")
@report_errors
def schedule_list(output: OutputFormat = OutputOption) -> None:
    """Show the schedules, their next window and how their last run went."""
    rows = Schedules(state.plane()).all()
    if output.for_people:
        for row in rows:
            row["last_error"] = _short(row["last_error"] or "")
    columns = ["id", "host", "vm", "every", "at", "tz", "next", "last_run", "last_duration"]
    emit_rows(rows, output, [*columns, "last_error"])


@schedule_app.command("runs")
@report_errors
def schedule_runs(
    schedule: Annotated[int | None, typer.Argument(help="schedule id (default: all)")] = None,
    output: OutputFormat = OutputOption,
) -> None:
    """Show the runs of the schedules, newest first: window, result, duration, points."""
    rows = Schedules(state.plane()).runs(schedule)
    if output.for_people:
        for row in rows:
            row["points"] = " ".join(row["points"])
            row["error"] = _short(row["error"] or "")
    columns = ["id", "schedule", "window", "state", "duration", "points", "error"]
    emit_rows(rows, output, columns)


@schedule_app.command("remove")
@report_errors
def schedule_remove(vm: OptionalVM = None, every_vm: AllOption = False) -> None:
    """Remove the schedule of VM (or the --all one); points already taken stay."""
    target = _target(vm, every_vm)
    Schedules(state.plane()).remove(state.host_name(), target)
    console.print(f"removed the backup schedule of {target or 'every VM'}")


# ---------------------------------------------------------------------- policies
@policy_app.command("set")
@report_errors
def policy_set(
    vm: VMArg,
    keep_last: Annotated[int, typer.Option(help="keep the newest N points")] = 0,
    keep_daily: Annotated[int, typer.Option(help="keep the newest point of each of D days")] = 0,
    keep_weekly: Annotated[int, typer.Option(help="keep the newest point of each of W weeks")] = 0,
    output: OutputFormat = OutputOption,
) -> None:
    """Store VM's retention; every later backup of it (scheduled or not) prunes by it."""
    policy = Policy(keep_last, keep_daily, keep_weekly)
    plane = state.plane()
    if not Backups(plane).points(vm) and not _vm_exists(vm):
        raise InvalidInput(
            f"VM {vm!r} has no backup points and is no VM of this host",
            hint="check the name: 'kvmgr backup list' and 'kvmgr vm list'",
        )
    emit_object(
        backup_policies.set_policy(plane.store, vm, policy, by=cli_principal().name), output
    )


def _vm_exists(vm: str) -> bool:
    from kvmgr.services import vms

    return vms.exists(state.host_connection(state.host_name()), vm)


@policy_app.command("list")
@report_errors
def policy_list(output: OutputFormat = OutputOption) -> None:
    """Show the stored policies."""
    rows = backup_policies.policies(state.plane().store)
    emit_rows(rows, output, ["vm", "keep_last", "keep_daily", "keep_weekly", "updated_by"])


@policy_app.command("remove")
@report_errors
def policy_remove(vm: VMArg) -> None:
    """Forget VM's policy: its points stay until pruned by hand."""
    backup_policies.remove_policy(state.plane().store, vm)
    console.print(f"removed the retention policy of {vm}")
