"""``kvmgr vm migrate``, ``kvmgr vm group`` and ``kvmgr host evacuate`` (kvmgr.control.moves)."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from kvmgr.cli.common import err_console, report_errors, state
from kvmgr.cli.output import OutputFormat, OutputOption, console, emit_object, emit_rows
from kvmgr.cli.vm_place import print_verdicts
from kvmgr.control.move_limits import EVACUATE_PARALLEL, EVACUATE_PARALLEL_MAX
from kvmgr.units import MIB, format_size

if TYPE_CHECKING:
    from kvmgr.control.moves import MoveReport


def _show_progress(sample: object, vm: str | None = None) -> None:
    from kvmgr.services.migration import Progress

    if not isinstance(sample, Progress) or not sys.stderr.isatty():  # people watch, logs do not
        return
    # Moves of an evacuation run side by side: each line names its VM.
    parts = ([vm] if vm else []) + [sample.phase, f"{sample.elapsed:5.1f}s"]
    if sample.disk_total:
        parts.append(f"disks {sample.disk_done // MIB}/{sample.disk_total // MIB} MiB")
    if sample.memory_total:
        parts.append(
            f"memory {sample.memory_done // MIB} MiB, {sample.memory_remaining // MIB} left"
        )
    if sample.rate:
        parts.append(f"{sample.rate / MIB:.1f} MiB/s")
    if sample.eta is not None:
        parts.append(f"ETA {sample.eta:.0f}s")
    if sample.downtime_ms:
        parts.append(f"max downtime {sample.downtime_ms} ms")
    err_console.print("  " + ", ".join(parts), highlight=False)


def _labels(text: str | None) -> dict[str, str]:
    from kvmgr.control.hosts import parse_labels

    return parse_labels(text)


def _print_check(report: MoveReport) -> None:
    check = report.check
    mode = "live" if check.live else "offline"
    console.print(f"{report.name}: {report.source} -> {report.target} ({mode})")
    for disk in check.disks:
        console.print(
            f"  copy {disk.target}: {disk.pool}/{disk.volume}, "
            f"{format_size(disk.allocation)} of {format_size(disk.capacity)}"
        )
    for layer in check.layers:
        how = "compare" if layer.present else "copy"
        console.print(
            f"  {how} image under {layer.disk}: {layer.pool}/{layer.volume}, "
            f"{format_size(layer.allocation)}"
        )
    if check.snapshots:
        current = f", current {check.current_snapshot}" if check.current_snapshot else ""
        console.print(f"  snapshots: {', '.join(check.snapshots)}{current}")
    console.print(f"  data to move: {format_size(check.copy_bytes)}")
    for line in check.warnings:
        console.print(f"  [yellow]warning:[/] {line}", highlight=False)
    for line in check.problems:
        console.print(f"  [red]refused:[/] {line}", highlight=False)


@report_errors
def migrate(
    name: Annotated[str, typer.Argument(help="VM to move (on --host, or the default host)")],
    to: Annotated[str, typer.Option("--to", help="destination host, or 'auto' (placement)")],
    offline: Annotated[
        bool, typer.Option("--offline", help="move a shut-off VM (default: by its state)")
    ] = False,
    live: Annotated[bool, typer.Option("--live", help="insist on a live move")] = False,
    max_downtime: Annotated[
        int | None, typer.Option("--max-downtime", help="ms; default: 300, raised as needed")
    ] = None,
    bandwidth: Annotated[int | None, typer.Option("--bandwidth", help="MiB/s cap")] = None,
    parallel: Annotated[int | None, typer.Option("--parallel", help="memory connections")] = None,
    postcopy: Annotated[bool, typer.Option("--postcopy", help="switch to post-copy")] = False,
    require: Annotated[
        str | None, typer.Option("--require", help="with --to auto: labels k=v,k2=v2 a host needs")
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="list every host with why it was picked or not")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="run the preflight checks only, move nothing")
    ] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Move a VM to another host: live with its local disks copied, or offline.

    External (--disk-only) snapshots move with it: the images under its disks are copied first,
    only the top is mirrored, and the records are redefined there, the current one kept.
    Internal snapshots are refused, not converted: delete them first ('kvmgr snap delete').
    """
    from kvmgr.control.moves import migrate_vm
    from kvmgr.services.migration import MigrateOptions

    options = MigrateOptions(
        offline=True if offline else (False if live else None),
        max_downtime_ms=max_downtime,
        bandwidth_mib=bandwidth,
        parallel=parallel,
        postcopy=postcopy,
    )
    cancel = threading.Event()
    try:
        report = migrate_vm(
            state.plane(), state.hosts(), name, state.host_name(), to, options,
            require=_labels(require), dry_run=dry_run, progress=_show_progress, cancel=cancel,
        )  # fmt: skip
    except KeyboardInterrupt:
        err_console.print("[yellow]aborted:[/] the VM stays on the source", highlight=False)
        raise typer.Exit(130) from None
    data = report.as_dict()
    if not output.for_people:
        emit_object(data, output)
        return
    if explain and report.verdicts:
        print_verdicts(report.verdicts)
    if dry_run:
        _print_check(report)
        if not report.check.ok:
            raise typer.Exit(1)
        return
    result = report.result
    assert result is not None
    console.print(
        f"{name}: moved {result.mode} from {report.source} to {report.target} in "
        f"{result.seconds:.1f} s"
        + (f", downtime {result.downtime_ms} ms" if result.downtime_ms is not None else "")
    )
    if len(result.downtime_steps) > 1:
        steps = " -> ".join(str(ms) for ms in result.downtime_steps)
        console.print(f"  allowed downtime raised {steps} ms until memory converged")
    if result.postcopy:
        console.print("  switched to post-copy (the destination fetched the remaining pages)")
    if result.snapshots:
        console.print(f"  snapshots moved: {', '.join(result.snapshots)}")


@report_errors
def group(
    name: Annotated[str, typer.Argument(help="VM")],
    group_name: Annotated[str | None, typer.Argument(help="placement group")] = None,
    anti_affinity: Annotated[
        bool, typer.Option("--anti-affinity", help="never two VMs of the group on one host")
    ] = False,
    unset: Annotated[bool, typer.Option("--unset", help="take the VM out of its group")] = False,
) -> None:
    """Put a VM in a placement group (kept in its definition, so it moves with it)."""
    from kvmgr.services.placement import Group, set_group

    if not unset and not group_name:
        raise typer.BadParameter("give a group name, or --unset")
    plane = state.plane()
    with plane.lease(plane.vm_key(state.host_name(), name), "group"):
        set_group(
            state.connection(), name, None if unset else Group(str(group_name), anti_affinity)
        )


@report_errors
def evacuate(
    name: Annotated[str, typer.Argument(help="registered host to empty")],
    parallel: Annotated[
        int,
        typer.Option(
            "--parallel",
            min=1,
            max=EVACUATE_PARALLEL_MAX,
            help="moves in flight at once: they share the source's link and disks, and more "
            "than a few split it so thin that busy guests stop converging",
        ),
    ] = EVACUATE_PARALLEL,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the plan only")] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Move every VM off a host (placement picks each destination), a few at a time; the host
    stays in maintenance once it is empty."""
    from kvmgr.control.moves import evacuate as run
    from kvmgr.control.moves import evacuation_summary

    try:
        report = run(
            state.plane(), state.hosts(), name, parallel=parallel, dry_run=dry_run,
            say=lambda line: err_console.print(line, highlight=False),
            progress=lambda vm, sample: _show_progress(sample, vm),
        )  # fmt: skip
    except KeyboardInterrupt:
        err_console.print("[yellow]aborted:[/] the moves in flight stay on the source")
        raise typer.Exit(130) from None
    if not output.for_people:
        emit_object(report.as_dict(), output)
    else:
        rows = [
            {"vm": o.vm, "to": o.target, "mode": "live" if o.live else "offline", "state": o.state}
            for o in report.outcomes
        ]
        columns = ["vm", "to", "mode"] if dry_run else ["vm", "to", "mode", "state"]
        emit_rows(rows, output, columns, title=f"evacuation of {name}")
        if not dry_run:
            console.print(evacuation_summary(report), highlight=False)
    if report.failed:
        raise typer.Exit(1)


@report_errors
def rebalance(
    threshold: Annotated[
        float, typer.Option(help="largest gap of committed guest memory (share of RAM) allowed")
    ] = 0.2,
    apply: Annotated[
        bool, typer.Option("--apply", help="make the moves (default: propose)")
    ] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Propose (or with --apply make) live moves that even out the hosts' guest memory."""
    from kvmgr.control.moves import rebalance as run

    moves, done = run(
        state.plane(), state.hosts(), threshold=threshold, apply=apply,
        say=lambda line: err_console.print(line, highlight=False),
    )  # fmt: skip
    rows = [
        {"vm": m.vm, "from": m.source, "to": m.target, "memory": format_size(m.memory)}
        for m in moves
    ]
    emit_rows(rows, output, ["vm", "from", "to", "memory"], title="rebalance")
    if output.for_people:
        console.print(f"{len(done)} VM(s) moved" if apply else f"{len(moves)} move(s) proposed")


def register(app: typer.Typer) -> None:
    app.command("migrate")(migrate)
    app.command("group")(group)


def register_host(app: typer.Typer) -> None:
    app.command("evacuate")(evacuate)
    app.command("rebalance")(rebalance)
