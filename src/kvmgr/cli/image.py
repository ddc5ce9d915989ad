"""``kvmgr image``: the cloud image library, and building the demo/test images."""

from __future__ import annotations

from typing import Annotated

import typer

from kvmgr.cli.common import authz, conn, progress, report_errors
from kvmgr.cli.objects import forget, journaled, record
from kvmgr.cli.output import OutputFormat, OutputOption, console, emit_object, emit_rows

app = typer.Typer(no_args_is_help=True)


@app.callback()
def image() -> None:
    """Cloud images (import, list, delete) and the demo/test images."""
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


@app.command("import")
@report_errors
def import_command(
    path: Annotated[str, typer.Argument(help="a qcow2 or raw cloud image file")],
    os: Annotated[str, typer.Option("--os", help="osinfo short id of the image's OS")],
    name: Annotated[str | None, typer.Option(help="library name (default: file name)")] = None,
    output: OutputFormat = OutputOption,
) -> None:
    """Store a cloud image once, as a protected base VMs get overlays of."""
    from os.path import abspath, basename  # the option named "os" hides the module

    from kvmgr.control.objects import image_key
    from kvmgr.services.cloud_images import import_image

    # Resolved and never a system file: every operator's VMs may be built on the library.
    path = authz().import_source(abspath(path), what="cloud image")
    label = name or basename(path)  # the service's default name, for the lease key
    with (
        progress(f"importing {path}"),
        journaled("image import", label, lambda host: image_key(host, label)) as steps,
    ):
        image = import_image(conn(), path, os_id=os, name=name, steps=steps)
    record("image", image.name)
    emit_object(image.as_dict(), output)


@app.command("list")
@report_errors
def list_command(output: OutputFormat = OutputOption) -> None:
    """List the cloud images of the library."""
    from kvmgr.services.cloud_images import list_images

    rows = [image.as_dict() for image in list_images(conn())]
    emit_rows(rows, output, ["name", "os_id", "format", "size", "imported"])


@app.command("delete")
@report_errors
def delete_command(name: Annotated[str, typer.Argument(help="image name")]) -> None:
    """Delete a cloud image no VM's disk is an overlay of."""
    from kvmgr.control.objects import image_key
    from kvmgr.services.cloud_images import delete_image

    with journaled("image delete", name, lambda host: image_key(host, name), sole=True) as steps:
        delete_image(conn(), name, steps)
    forget("image", name)
    console.print(f"image {name}: deleted")


@app.command("build-test-media")
@report_errors
def build_test_media_command(
    directory: Annotated[
        str, typer.Argument(help="where to write rocky-demo.iso, cloud-demo.qcow2")
    ],
    output: OutputFormat = OutputOption,
) -> None:
    """Build the Rocky-like installer ISO and the demo cloud image (tests, demos, benchmarks)."""
    from pathlib import Path

    from kvmgr.images.test_media import build_cloud_image, build_installer_iso

    target = Path(directory)
    if not target.is_dir():
        raise typer.BadParameter(f"{directory} is not a directory")
    with progress("building test media"):
        iso = build_installer_iso(target / "rocky-demo.iso")
        cloud = build_cloud_image(target / "cloud-demo.qcow2")
    emit_object({"installer_iso": str(iso), "cloud_image": str(cloud)}, output)
