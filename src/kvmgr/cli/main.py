"""The ``kvmgr`` command.  Each command group lives in its own module and only translates:
arguments in, a service call, output out."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from kvmgr import __version__
from kvmgr.cli.common import state

app = typer.Typer(
    name="kvmgr",
    help="Take a bare Linux host to running KVM virtual machines, and manage them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# (module, group name, help).  Groups are imported at start-up; keep their imports light.
_GROUPS = [
    ("kvmgr.cli.vm", "vm", "Create, run, change and inspect virtual machines."),
    ("kvmgr.cli.host", "host", "Check and set up this host: KVM, libvirt, daemons, bridges."),
    ("kvmgr.cli.image", "image", "Build bootable images (the demo/test ISO)."),
    ("kvmgr.cli.iso", "iso", "Import installation ISOs, detect their OS, list and delete them."),
    ("kvmgr.cli.net", "net", "NAT, isolated, routed and bridged networks; DHCP leases."),
    ("kvmgr.cli.pool", "pool", "Storage pools."),
    ("kvmgr.cli.vol", "vol", "Storage volumes: create, resize, upload, download."),
    ("kvmgr.cli.snap", "snap", "Snapshots: create, list as a tree, revert, delete."),
    ("kvmgr.cli.user", "user", "Users and roles of the REST API and web UI."),
    ("kvmgr.cli.serve", "serve", "Run the REST API and web UI."),
]


def _register_groups() -> None:
    for module_name, name, help_text in _GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue  # a group not written yet
            raise
        app.add_typer(module.app, name=name, help=help_text)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kvmgr {__version__}")
        raise typer.Exit


@app.callback()
def root(
    connect: Annotated[
        str | None,
        typer.Option(
            "--connect", "-c", envvar="KVMGR_URI", help="libvirt URI (default qemu:///system)"
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    state.uri = connect


_register_groups()


def run() -> None:
    try:
        app()
    finally:
        state.close()


if __name__ == "__main__":
    run()
