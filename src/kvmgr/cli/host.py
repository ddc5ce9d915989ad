"""``kvmgr host``: check and set up this host."""

from __future__ import annotations

import typer

from kvmgr.cli.host_daemons import app as daemons_app

app = typer.Typer(no_args_is_help=True)
app.add_typer(daemons_app, name="daemons", help="Start libvirtd/virtlogd where there is no systemd.")
