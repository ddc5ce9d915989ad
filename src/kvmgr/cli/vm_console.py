"""``kvmgr vm console``: the serial console through libvirt's stream API (local or remote)."""

from __future__ import annotations

from typing import Annotated

import typer

from kvmgr.cli.common import conn, report_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @report_errors
    def console(
        name: Annotated[str, typer.Argument(help="VM name")],
        escape: Annotated[str, typer.Option(help="key that leaves the console")] = "^]",
    ) -> None:
        """Attach this terminal to the VM's serial console; the escape key (Ctrl+]) leaves."""
        from kvmgr.services.console import attach_interactive

        attach_interactive(conn(), name, escape)
