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
        force: Annotated[
            bool,
            typer.Option("--force", help="take the console over from another session"),
        ] = False,
    ) -> None:
        """Attach this terminal to the VM's serial console; the escape key (Ctrl+]) leaves.

        Refused while someone else has it open (here, in the web UI or elsewhere), unless
        --force: then their session is disconnected.
        """
        from kvmgr.services.console import attach_interactive

        attach_interactive(conn(), name, escape, force=force)
