"""``kvmgr pool``: storage pools (translation only)."""

from __future__ import annotations

import posixpath
from typing import Annotated, Any

import typer

from kvmgr.cli.common import authz, conn, report_errors
from kvmgr.cli.objects import (
    GroupOption,
    NoGroupOption,
    busy,
    change_group,
    forget,
    held,
    journaled,
    owner_fields,
    record,
)
from kvmgr.cli.output import OutputFormat, OutputOption, console, emit_object, emit_rows
from kvmgr.control.objects import check_group, pool_key
from kvmgr.services import storage_pools
from kvmgr.units import format_size

app = typer.Typer(no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="pool name")]
_SIZES = ("capacity", "allocation", "available")


def _human(info: storage_pools.PoolInfo, fmt: OutputFormat) -> dict[str, Any]:
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
    group: GroupOption = None,
    output: OutputFormat = OutputOption,
) -> None:
    """Create, start and autostart a storage pool."""
    check_group(group)
    path = authz().pool_path(path)  # never in, on or above a system directory
    with journaled("pool create", name, lambda host: pool_key(host, name)) as steps:
        made = storage_pools.create_pool(conn(), name, path, pool_type, steps=steps)
    record("pool", name, group=group)
    emit_object(_human(made, output), output)


@app.command("list")
@report_errors
def list_(output: OutputFormat = OutputOption) -> None:
    """Storage pools with path, state, sizes and volume count."""
    rows = [_human(info, output) for info in storage_pools.list_pools(conn())]
    emit_rows(
        rows,
        output,
        ["name", "type", "path", "active", "autostart", "capacity", "available", "volumes"],
    )


@app.command("info")
@report_errors
def info(name: Name, output: OutputFormat = OutputOption) -> None:
    """Everything about one pool, who owns it and who works on it."""
    data = _human(storage_pools.pool_info(conn(), name), output)
    data.update(owner_fields("pool", name))
    data["busy"] = busy(lambda host: pool_key(host, name))
    emit_object(data, output)


@app.command("set")
@report_errors
def set_(name: Name, group: GroupOption = None, no_group: NoGroupOption = False) -> None:
    """Change who may use a pool: its group (admins only, as the CLI's caller is)."""
    change_group(
        "pool", name, group, no_group,
        key=lambda host: pool_key(host, name), exists=lambda: storage_pools.pool_info(conn(), name),
    )  # fmt: skip


@app.command("refresh")
@report_errors
def refresh(name: Name, output: OutputFormat = OutputOption) -> None:
    """Rescan the pool's directory for volumes (starts a stopped pool)."""
    with held(lambda host: pool_key(host, name), "refresh"):
        refreshed = storage_pools.refresh_pool(conn(), name)
    emit_object(_human(refreshed, output), output)


@app.command("delete")
@report_errors
def delete(
    name: Name,
    force: Annotated[
        bool, typer.Option(help="also delete the pool's volumes (never ones a VM uses)")
    ] = False,
) -> None:
    """Remove a pool; its directory only when empty (refused while it holds volumes)."""
    with journaled("pool delete", name, lambda host: pool_key(host, name), sole=True) as steps:
        where = storage_pools.pool_info(conn(), name).path
        result = storage_pools.delete_pool(conn(), name, force=force, steps=steps)
    forget("pool", name)
    if where:  # a dir pool's volumes are its files: their records are keyed by path
        forget("volume", *(posixpath.join(where, vol) for vol in result.deleted_volumes))
    for volume in result.deleted_volumes:
        console.print(f"deleted volume {volume}", highlight=False)
    for kept in result.kept_files:
        console.print(f"kept {kept} (not a disk or ISO image)", highlight=False)
    where = "and its directory " if result.directory_removed else ""
    console.print(f"pool {name} {where}deleted", highlight=False)
