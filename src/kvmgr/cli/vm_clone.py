"""``kvmgr vm clone`` and ``kvmgr vm template``: one call into kvmgr.services.clones each."""

from __future__ import annotations

from typing import Annotated

import typer

from kvmgr.cli.common import conn, journaled, report_errors, vm_lease
from kvmgr.cli.objects import record_vm
from kvmgr.cli.output import OutputFormat, OutputOption, emit_object


@report_errors
def clone(
    source: Annotated[str, typer.Argument(help="VM to clone (shut off, or a template)")],
    name: Annotated[str, typer.Argument(help="name of the new VM")],
    linked: Annotated[
        bool, typer.Option("--linked", help="qcow2 overlays on the source's disks (templates)")
    ] = False,
    start: Annotated[bool, typer.Option("--start", help="start the clone")] = False,
    snapshot: Annotated[
        str | None, typer.Option(help="clone from this external snapshot of the source")
    ] = None,
    output: OutputFormat = OutputOption,
) -> None:
    """Copy a VM: new name, UUID and MACs; disks copied (or linked), ISOs shared."""
    from kvmgr.services import clones  # the clone engine is only imported by its commands

    with journaled("clone", f"{source} to {name}", vms=(source,), new_names=(name,)) as steps:
        result = clones.clone_vm(
            conn(), source, name, linked=linked, start=start, snapshot=snapshot, steps=steps
        )
    record_vm(result.name)
    data = result.as_dict()
    if output.for_people:  # scripts get the exact number, people a readable one
        data["seconds"] = f"{result.seconds:.2f}"
    emit_object(data, output)


@report_errors
def template(
    name: Annotated[str, typer.Argument(help="a shut-off VM")],
    unset: Annotated[
        bool, typer.Option("--unset", help="make it a normal VM again (no linked clones)")
    ] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Mark a VM as a template: never started, disks frozen, base for linked clones."""
    from kvmgr.services import clones

    with vm_lease(name, "template --unset" if unset else "template"):
        emit_object(clones.mark_template(conn(), name, template=not unset), output)


def register(app: typer.Typer) -> None:
    app.command("clone")(clone)
    app.command("template")(template)
