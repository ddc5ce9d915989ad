"""What virsh users type: ``vm destroy`` and ``vm undefine``, ``vm rename``, ``vm cdrom``.

``destroy`` is virsh's name for kvmgr's ``vm off`` and does the same.  ``undefine`` is not
made an alias: in virsh it keeps every disk, and kvmgr's ``vm delete`` removes the disks kvmgr
made, so it answers with the command that does what the user meant.
"""

from __future__ import annotations

from typing import Annotated

import typer

from kvmgr.cli.common import authz, conn, report_errors, vm_lease
from kvmgr.cli.output import console
from kvmgr.errors import InvalidInput
from kvmgr.services import vms

NameArg = Annotated[str, typer.Argument(help="VM name")]
TargetOption = Annotated[
    str | None, typer.Option("--target", help="the drive (e.g. sda) when the VM has several")
]

cdrom_app = typer.Typer(no_args_is_help=True, help="Change the medium in a VM's CD-ROM drive.")


@report_errors
def destroy(name: NameArg) -> None:
    """virsh's name for 'vm off': power the VM off at once (its disks stay)."""
    with vm_lease(name, "off"):
        vms.force_off(conn(), name)
    console.print(f"{name}: powered off")


@report_errors
def undefine(name: NameArg) -> None:
    """virsh's undefine: kvmgr says which command keeps the disks."""
    raise InvalidInput(
        "kvmgr has no 'vm undefine'",
        hint=f"'kvmgr vm delete {name} --keep-disks' removes the definition and keeps every "
        f"disk, as virsh undefine does; 'kvmgr vm delete {name}' also removes the disks kvmgr "
        "made for it",
    )


@report_errors
def rename(name: NameArg, new_name: Annotated[str, typer.Argument(help="new name")]) -> None:
    """Rename a shut-off VM (UUID, disks, snapshots and owner stay)."""
    from kvmgr.services.media import rename as rename_vm

    with vm_lease(name, f"rename to {new_name}"):
        rename_vm(conn(), name, new_name)
    console.print(f"{name}: renamed to {new_name}")


@cdrom_app.command("eject")
@report_errors
def eject(name: NameArg, target: TargetOption = None) -> None:
    """Empty the CD-ROM drive (live when the VM runs, and in its definition)."""
    from kvmgr.services.media import eject as eject_media

    with vm_lease(name, "cdrom eject"):
        held = eject_media(conn(), name, target)
    console.print(f"{name}: ejected {held}" if held else f"{name}: the drive was empty")


@cdrom_app.command("insert")
@report_errors
def insert(
    name: NameArg,
    iso: Annotated[str, typer.Argument(help="imported ISO name, or a path (admins)")],
    target: TargetOption = None,
) -> None:
    """Put an ISO in the CD-ROM drive (live when the VM runs, and in its definition)."""
    from kvmgr.services.media import insert as insert_media

    path = authz().iso(iso)  # the library's ISOs; a host path resolved and checked
    with vm_lease(name, "cdrom insert"):
        held = insert_media(conn(), name, path, target)
    console.print(f"{name}: {path} inserted" + (f" (replacing {held})" if held else ""))


def register(app: typer.Typer) -> None:
    app.command("destroy")(destroy)
    app.command("undefine")(undefine)
    app.command("rename")(rename)
    app.add_typer(cdrom_app, name="cdrom")
