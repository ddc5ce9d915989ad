"""``kvmgr vol``: storage volumes, uploads and downloads (translation only)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from kvmgr.cli.common import conn, report_errors
from kvmgr.cli.objects import forget, held, journaled, record
from kvmgr.cli.output import (
    OutputFormat,
    OutputOption,
    console,
    emit_object,
    emit_rows,
    err_console,
)
from kvmgr.control.objects import vol_key
from kvmgr.services import storage
from kvmgr.units import format_size

app = typer.Typer(no_args_is_help=True)

Pool = Annotated[str, typer.Argument(help="pool name")]
Name = Annotated[str, typer.Argument(help="volume name")]


def _human(info: storage.VolumeInfo, fmt: OutputFormat) -> dict[str, Any]:
    data = info.as_dict()
    if fmt.for_people:
        data["capacity"] = format_size(info.capacity)
        data["allocation"] = format_size(info.allocation)
    return data


@contextmanager
def _progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A Rich transfer bar on stderr; yields the callback the service reports through."""
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report


@app.command("create")
@report_errors
def create(
    pool: Pool,
    name: Name,
    size: Annotated[str, typer.Option(help="capacity, e.g. 10G")],
    fmt: Annotated[str, typer.Option("--format", help="qcow2 or raw")] = "qcow2",
    output: OutputFormat = OutputOption,
) -> None:
    """Create a sparse volume."""
    with journaled("vol create", f"{pool}/{name}", lambda host: vol_key(host, pool, name)) as steps:
        made = storage.create_pool_volume(conn(), pool, name, size, fmt, steps=steps)
    record("volume", made.path, label=f"{pool}/{name}")
    emit_object(_human(made, output), output)


@app.command("list")
@report_errors
def list_(pool: Pool, output: OutputFormat = OutputOption) -> None:
    """Volumes of a pool, with the VMs that use them."""
    rows = [_human(info, output) for info in storage.list_volumes(conn(), pool)]
    emit_rows(rows, output, ["name", "format", "capacity", "allocation", "used_by", "path"])


@app.command("info")
@report_errors
def info(pool: Pool, name: Name, output: OutputFormat = OutputOption) -> None:
    """Everything about one volume."""
    emit_object(_human(storage.volume_info(conn(), pool, name), output), output)


@app.command("resize")
@report_errors
def resize(
    pool: Pool,
    name: Name,
    size: Annotated[str, typer.Option(help="new capacity, e.g. 20G")],
    shrink: Annotated[bool, typer.Option(help="allow a smaller size (loses data)")] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Grow a volume (or shrink it with --shrink)."""
    with held(lambda host: vol_key(host, pool, name), "resize"):
        result = storage.resize_volume(conn(), pool, name, size, shrink=shrink)
    emit_object(_human(result, output), output)


@app.command("delete")
@report_errors
def delete(pool: Pool, name: Name) -> None:
    """Delete a volume (refused while a VM uses it)."""
    key = lambda host: vol_key(host, pool, name)  # noqa: E731 - the key of the volume
    with journaled("vol delete", f"{pool}/{name}", key, sole=True) as steps:
        path = storage.volume_info(conn(), pool, name).path
        storage.delete_pool_volume(conn(), pool, name, steps)
    forget("volume", path)
    console.print(f"volume {name} deleted from pool {pool}", highlight=False)


@app.command("upload")
@report_errors
def upload(
    pool: Pool,
    name: Name,
    source: Annotated[str, typer.Argument(help="local file to send")],
    output: OutputFormat = OutputOption,
) -> None:
    """Copy a local file into a volume (created if missing); holes stay holes."""
    key = lambda host: vol_key(host, pool, name)  # noqa: E731 - the key of the volume
    with (
        _progress_bar(f"upload {name}") as report,
        journaled("vol upload", f"{pool}/{name}", key) as steps,
    ):
        result = storage.upload_volume(conn(), pool, name, source, progress=report, steps=steps)
    # an overwritten volume keeps its owner; a new one is the CLI's
    record("volume", result.path, label=f"{pool}/{name}", if_missing=True)
    emit_object(_human(result, output), output)


@app.command("download")
@report_errors
def download(
    pool: Pool,
    name: Name,
    target: Annotated[str, typer.Argument(help="local file to write")],
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
) -> None:
    """Copy a volume into a local file; holes stay holes."""
    with _progress_bar(f"download {name}") as report:
        size = storage.download_volume(conn(), pool, name, target, overwrite=force, progress=report)
    console.print(f"{target}: {format_size(size)}", highlight=False)
