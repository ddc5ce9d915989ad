"""``kvmgr iso``: import installation ISOs, detect their OS, list and delete them."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from kvmgr.cli.common import authz, conn, report_errors
from kvmgr.cli.objects import forget, journaled, record
from kvmgr.cli.output import OutputFormat, OutputOption, emit_object, emit_rows, err_console
from kvmgr.control.objects import iso_key
from kvmgr.units import format_size

app = typer.Typer(no_args_is_help=True)

PoolOption = Annotated[
    str,
    typer.Option(
        "--pool",
        help="storage pool of the ISO library; import creates a missing one under /var/lib/kvmgr",
    ),
]
_DEFAULT_POOL = "kvmgr-isos"  # kvmgr.services.isos.ISO_POOL, kept literal to import lazily


def _human(row: dict[str, Any], fmt: OutputFormat, *keys: str) -> dict[str, Any]:
    """Sizes as ``4.4 GiB`` for people; scripts get bytes."""
    if fmt.for_people:
        for key in keys:
            if isinstance(row.get(key), int):
                row[key] = format_size(row[key])
    return row


@app.command("import")
@report_errors
def import_cmd(
    path: Annotated[Path, typer.Argument(help="the .iso file to upload")],
    name: Annotated[str | None, typer.Option(help="library name (default: file name)")] = None,
    pool: PoolOption = _DEFAULT_POOL,
    output: OutputFormat = OutputOption,
) -> None:
    """Upload an ISO into the library (through libvirt, so remote hosts work too)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from kvmgr.services import isos

    path = Path(authz().import_source(str(path.absolute())))  # never a system file
    label = name or path.name  # the service's default name, for the lease key
    with (
        journaled("iso import", label, lambda host: iso_key(host, label, pool)) as steps,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            console=err_console,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task(f"uploading {path.name}", total=None)
        info = isos.import_iso(
            conn(),
            path,
            name,
            pool,
            progress=lambda sent, total: bar.update(task, completed=sent, total=total),
            steps=steps,
        )
    record("iso", info.name, label=f"{pool}/{info.name}")
    emit_object(_human(asdict(info), output, "size"), output)


@app.command("list")
@report_errors
def list_cmd(pool: PoolOption = _DEFAULT_POOL, output: OutputFormat = OutputOption) -> None:
    """List imported ISOs with the OS detected on each."""
    from kvmgr.services import isos

    rows = [_human(asdict(info), output, "size") for info in isos.list_isos(conn(), pool)]
    emit_rows(rows, output, ["name", "os_id", "os_name", "size", "path"])


@app.command()
@report_errors
def delete(
    name: Annotated[str, typer.Argument(help="name of the imported ISO")],
    pool: PoolOption = _DEFAULT_POOL,
) -> None:
    """Delete an imported ISO (refused while a VM uses it)."""
    from kvmgr.services import isos

    with journaled("iso delete", name, lambda host: iso_key(host, name, pool), sole=True) as steps:
        isos.delete_iso(conn(), name, pool, steps)
    forget("iso", name)
    err_console.print(f"deleted ISO {name}")


@app.command()
@report_errors
def detect(
    path: Annotated[Path, typer.Argument(help="an .iso file on this host")],
    output: OutputFormat = OutputOption,
) -> None:
    """Identify the OS on an ISO from its volume descriptor (osinfo-db); no daemon needed."""
    from kvmgr.osinfo import detect_iso

    detection = detect_iso(path)
    profile = detection.profile
    data: dict[str, Any] = {
        "os_id": profile.short_id,
        "name": profile.name if detection.matched else "unknown media: generic profile",
        "matched": detection.matched,
        "arch": profile.arch,
        "memory": profile.recommended_memory,
        "vcpus": profile.recommended_vcpus,
        "disk": profile.recommended_disk,
        "virtio": profile.virtio,
        "q35": profile.q35,
        "uefi": profile.uefi,
        "volume_id": detection.volume_id,
        "system_id": detection.system_id,
        "publisher_id": detection.publisher_id,
        "application_id": detection.application_id,
        "volume_size": detection.volume_size,
        "candidates": detection.candidates,
    }
    emit_object(_human(data, output, "memory", "disk", "volume_size"), output)
