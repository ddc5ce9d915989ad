"""``kvmgr pool``: storage pools (translation only)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kvmgr.cli.common import authz, conn, report_errors
from kvmgr.cli.output import OutputFormat, OutputOption, console, emit_object, emit_rows
from kvmgr.services import storage
from kvmgr.units import format_size

app = typer.Typer(no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="pool name")]
_SIZES = ("capacity", "allocation", "available")


def _human(info: storage.PoolInfo, fmt: OutputFormat) -> dict[str, Any]:
    """Sizes as bytes for scripts, as ``1.5 GiB`` for people."""
    data = info.as_dict()
    if fmt.for_people:
        for key in _SIZES:
            data[key] = format_size(data[key])
    return data


@app.command("create")
@report_errors
def create(
    name: Name,
    path: Annotated[str, typer.Option(help="directory of the pool (created if missing)")],
    pool_type: Annotated[str, typer.Option("--type", help="pool type: dir")] = "dir",
    output: OutputFormat = OutputOption,
) -> None:
    """Create, start and autostart a storage pool."""
    path = authz().pool_path(path)  # never in, on or above a system directory
    emit_object(_human(storage.create_pool(conn(), name, path, pool_type), output), output)


@app.command("list")
@report_errors
def list_(output: OutputFormat = OutputOption) -> None:
    """Storage pools with path, state, sizes and volume count."""
    rows = [_human(info, output) for info in storage.list_pools(conn())]
    emit_rows(
        rows,
        output,
        ["name", "type", "path", "active", "autostart", "capacity", "available", "volumes"],
    )


@app.command("info")
@report_errors
def info(name: Name, output: OutputFormat = OutputOption) -> None:
    """Everything about one pool."""
    emit_object(_human(storage.pool_info(conn(), name), output), output)


@app.command("refresh")
@report_errors
def refresh(name: Name, output: OutputFormat = OutputOption) -> None:
    """Rescan the pool's directory for volumes (starts a stopped pool)."""
    emit_object(_human(storage.refresh_pool(conn(), name), output), output)


@app.command("delete")
@report_errors
def delete(
    name: Name,
    force: Annotated[
        bool, typer.Option(help="also delete the pool's volumes (never ones a VM uses)")
    ] = False,
) -> None:
    """Remove a pool; its directory only when empty (refused while it holds volumes)."""
    result = storage.delete_pool(conn(), name, force=force)
    for volume in result.deleted_volumes:
        console.print(f"deleted volume {volume}", highlight=False)
    for kept in result.kept_files:
        console.print(f"kept {kept} (not a disk or ISO image)", highlight=False)
    where = "and its directory " if result.directory_removed else ""
    console.print(f"pool {name} {where}deleted", highlight=False)
