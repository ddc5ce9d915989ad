"""``kvmgr host daemons``: start, stop and show libvirt's daemons (filled in by the daemons work)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
