"""``kvmgr image``: build the demo/test ISO."""

from __future__ import annotations

from typing import Annotated

import typer

from kvmgr.cli.common import progress, report_errors
from kvmgr.cli.output import OutputFormat, OutputOption, emit_object

app = typer.Typer(no_args_is_help=True)


@app.callback()
def image() -> None:
    """Build bootable images (the demo/test ISO)."""
    # A callback keeps 'image' a group: with one command alone Typer would collapse it into
    # 'kvmgr image PATH', and 'kvmgr image build-demo-iso PATH' (scripts/demo.sh) would fail.


@app.command("build-demo-iso")
@report_errors
def build_demo_iso_command(
    path: Annotated[
        str, typer.Argument(help="where to write the ISO, e.g. /var/lib/kvmgr/demo.iso")
    ],
    force: Annotated[
        bool, typer.Option("--force", help="rebuild even if inputs are unchanged")
    ] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Build a tiny bootable ISO (host kernel, busybox): DHCP, markers, a serial shell."""
    from kvmgr.images.demo_iso import build_demo_iso

    with progress("building the demo ISO"):
        iso = build_demo_iso(path, force=force)
    emit_object(
        {
            "path": str(iso.path),
            "volume_id": iso.volume_id,
            "reused": iso.reused,
            "kernel": iso.inputs.kernel_version,
            "busybox": iso.inputs.busybox_version,
            "modules": list(iso.inputs.modules),
            "size_bytes": iso.path.stat().st_size,
        },
        output,
    )
