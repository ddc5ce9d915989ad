"""``kvmgr vm vnc``: show a VM's graphical display, or forward it to a local viewer.

Without ``--listen`` it prints the display.  With ``--listen 127.0.0.1:PORT`` (or ``--viewer``)
it serves the display on that loopback port behind a one-time VNC password (see
``kvmgr.services.vnc``), starts ``remote-viewer`` when it is installed, and runs until that
viewer's session ends (or Ctrl-C).  Like ``vm console`` it only watches the VM: no lease, the
connection's own libvirt access decides.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kvmgr.cli.common import conn, report_errors
from kvmgr.cli.output import OutputFormat, OutputOption, emit_object, emit_rows, err_console
from kvmgr.errors import InvalidState

if TYPE_CHECKING:  # the service is imported when a command runs, not when the CLI starts
    from kvmgr.services.vnc import Forwarder, SessionEnd

#: Viewers that take a connection file with the password in it (virt-viewer's package ships
#: remote-viewer; ``virt-viewer`` itself only opens libvirt domains by name).
VIEWERS = ("remote-viewer",)


def find_viewer() -> str | None:
    for name in VIEWERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def launch_viewer(
    viewer: str, name: str, host: str, port: int, password: str
) -> subprocess.Popen[bytes]:
    """Start the viewer on a connection file (mode 0600 in a private directory) that it deletes
    once read, so the password never appears in a process listing."""
    folder = Path(tempfile.mkdtemp(prefix="kvmgr-vnc-"))
    connection_file = folder / "display.vv"
    descriptor = os.open(connection_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(
            "[virt-viewer]\ntype=vnc\n"
            f"host={host}\nport={port}\npassword={password}\n"
            f"title=kvmgr: {name}\ndelete-this-file=1\n"
        )
    return subprocess.Popen(  # a program found on PATH, and a file we wrote
        [viewer, str(connection_file)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in this terminal stops the forwarder, not the viewer
    )


def register(app: typer.Typer) -> None:
    @app.command()
    @report_errors
    def vnc(
        name: Annotated[str, typer.Argument(help="VM name")],
        listen: Annotated[
            str | None,
            typer.Option(
                help="forward the display to ADDRESS:PORT (or PORT on 127.0.0.1; 0 picks a "
                "free port) behind a one-time password, until the viewer disconnects"
            ),
        ] = None,
        viewer: Annotated[
            bool | None,
            typer.Option(
                "--viewer/--no-viewer",
                help="start remote-viewer on the forwarded display (default: when installed "
                "and --listen is given); --viewer alone forwards to a free loopback port",
            ),
        ] = None,
        allow_remote: Annotated[
            bool,
            typer.Option(
                "--allow-remote",
                help="let --listen use a non-loopback address (the password is then the only "
                "protection, and VNC is not encrypted)",
            ),
        ] = False,
        output: OutputFormat = OutputOption,
    ) -> None:
        """Show the VM's graphical display (VNC), or forward it to a local viewer.

        Without --listen: the display's type, where it listens, and whether it has a password.
        With --listen 127.0.0.1:PORT: point any VNC viewer at that port and give it the
        password printed; the password works once, and the command ends when that viewer
        disconnects, after 5 wrong passwords, or on Ctrl-C.
        """
        from kvmgr.services import vnc as vnc_service

        if listen is None and not viewer:
            _show(name, output)
            return
        host, port = vnc_service.parse_listen(listen or "127.0.0.1:0", allow_remote=allow_remote)
        connection = conn()
        # a stopped VM, or a display this connection cannot reach, is refused before listening
        vnc_service.reachable_display(connection, name)
        forwarder = vnc_service.Forwarder(
            lambda: vnc_service.open_display(connection, name), host, port
        )
        try:
            process, end = _forward(name, forwarder, viewer, output)
        except KeyboardInterrupt:
            err_console.print("stopped")
            return
        if forwarder.error is not None:
            raise forwarder.error
        if end.failures >= vnc_service.MAX_FAILURES and not end.served:
            raise vnc_service.too_many_failures(end)
        if not end.served and process is not None:
            raise InvalidState(
                f"the viewer exited (status {process.returncode}) before it connected",
                hint=f"is $DISPLAY set? run 'kvmgr vm vnc {name} --listen 127.0.0.1:PORT "
                "--no-viewer' and point any VNC viewer at that port",
            )
        err_console.print("the viewer disconnected", highlight=False)

    def _show(name: str, output: OutputFormat) -> None:
        from kvmgr.services import vms
        from kvmgr.services import vnc as vnc_service

        found = vnc_service.displays(vms.definition(vms.lookup(conn(), name)))
        rows = [{**display.as_dict(), "where": display.where} for display in found]
        emit_rows(rows, output, ["type", "listen", "where", "port", "password"])
        if output.for_people:
            if not found:
                err_console.print(f"VM {name} has no graphical display", highlight=False)
            elif any(display.type == "vnc" for display in found):
                err_console.print(
                    f"forward it to a local viewer: kvmgr vm vnc {name} --listen 127.0.0.1:5901",
                    highlight=False,
                )


def _forward(
    name: str, forwarder: Forwarder, viewer: bool | None, output: OutputFormat
) -> tuple[subprocess.Popen[bytes] | None, SessionEnd]:
    """Say where the display is and its password, start the viewer, serve until done."""
    bound_host, bound_port = forwarder.address
    program = find_viewer() if viewer is not False else None
    if output.for_people:
        typer.echo(f"VM {name}: VNC display forwarded to {forwarder.url}")
        typer.echo(f"password: {forwarder.password}  (one viewer session; Ctrl-C stops)")
    else:
        record = {
            "vm": name,
            "host": bound_host,
            "port": bound_port,
            "url": forwarder.url,
            "password": forwarder.password,
            "viewer": program,
        }
        if output is OutputFormat.json:  # one line: a script reads it while we run
            typer.echo(json.dumps(record))
        else:
            emit_object(record, output)
    sys.stdout.flush()
    process = None
    if program is not None:
        process = launch_viewer(program, name, bound_host, bound_port, forwarder.password)
    elif viewer:
        err_console.print(
            "no remote-viewer installed (package virt-viewer): open a VNC viewer on "
            f"{bound_host}:{bound_port} and give it the password",
            highlight=False,
        )
    return process, forwarder.serve(lambda: process is not None and process.poll() is not None)
