"""The ``kvmgr`` command.  Each command group lives in its own module and only translates:
arguments in, a service call, output out."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer
from typer import _click as click  # Typer vendors click; its groups take these types
from typer.core import TyperGroup

from kvmgr import __version__
from kvmgr.cli.common import state
from kvmgr.cli.output import take_output_flags


class _LazyGroups(TyperGroup):
    """Imports a command group only when it is used.

    ``kvmgr vm list`` then pays for the ``vm`` group alone, not for the API server, the snapshot
    engine and every other group: CLI start-up is most of the cost of a short command.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [
            *super().list_commands(ctx),
            *(n for _m, n, _h in _GROUPS if n not in self.commands),
        ]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            command = _load_group(cmd_name)
            if command is not None:
                self.add_command(command, cmd_name)
        return command


def _load_group(name: str) -> click.Command | None:
    for module_name, group, help_text in _GROUPS:
        if group == name:
            module: Any = importlib.import_module(module_name)
            command = typer.main.get_command(module.app)
            command.name = name
            command.help = command.help or help_text
            command.short_help = help_text
            return command
    return None


app = typer.Typer(
    name="kvmgr",
    cls=_LazyGroups,
    help="Take a bare Linux host to running KVM virtual machines, and manage them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# (module, group name, help).  A group's module is imported only when that group is used.
_GROUPS = [
    ("kvmgr.cli.vm", "vm", "Create, run, change and inspect virtual machines."),
    (
        "kvmgr.cli.host",
        "host",
        "Hosts kvmgr manages; check and set up a host: KVM, libvirt, bridges.",
    ),
    ("kvmgr.cli.image", "image", "Build bootable images (the demo/test ISO)."),
    ("kvmgr.cli.iso", "iso", "Import installation ISOs, detect their OS, list and delete them."),
    ("kvmgr.cli.net", "net", "NAT, isolated, routed and bridged networks; DHCP leases."),
    ("kvmgr.cli.pool", "pool", "Storage pools."),
    ("kvmgr.cli.vol", "vol", "Storage volumes: create, resize, upload, download."),
    ("kvmgr.cli.snap", "snap", "Snapshots: create, list as a tree, revert, delete."),
    ("kvmgr.cli.backup", "backup", "Backups: full and incremental points, verify, restore."),
    ("kvmgr.cli.user", "user", "Users and roles of the REST API and web UI."),
    ("kvmgr.cli.serve", "serve", "Run the REST API and web UI."),
    ("kvmgr.cli.ops", "ops", "Journaled operations: list them, recover what crashed ones left."),
    ("kvmgr.cli.worker", "worker", "Run queued tasks (several workers may share one database)."),
]


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
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="registered host to act on (see 'kvmgr host list'); accepted anywhere on the "
            "command line; default: the 'host set NAME --default' one, the only one, or local",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    state.uri = connect
    if host is not None:
        state.host = host


#: Global options accepted anywhere on the command line, by the state attribute they set.
_ANYWHERE = {"--host": "host", "--connect": "uri", "-c": "uri"}


def take_global_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--host NAME`` and ``-c/--connect URI`` (also ``--opt=value``) anywhere before ``--``.

    Every VM, network, pool, volume, snapshot and ISO command acts on one host, so the options
    belong to all of them; taken out here, no command has to declare them and they may follow
    the subcommand (``kvmgr vm list --host h1``, ``kvmgr vm list -c qemu+ssh://...``), as
    virsh users type them, as well as precede it.
    """
    found: dict[str, str] = {}
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            rest.append(arg)
            rest.extend(args)
            break
        option, equals, inline = arg.partition("=")
        if option in _ANYWHERE and equals and option.startswith("--"):
            found[_ANYWHERE[option]] = inline
        elif arg in _ANYWHERE:
            value = next(args, None)
            if value is None or value.startswith("-"):
                rest.append(arg)  # let the parser report the missing value
                if value is not None:
                    rest.append(value)
                continue
            found[_ANYWHERE[arg]] = value
        else:
            rest.append(arg)
    return found, rest


def take_host_option(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--host`` (and ``-c``) taken out of ``argv``; ``-c`` is put back in front for the root."""
    found, rest = take_global_options(argv)
    if "uri" in found:
        rest = ["--connect", found["uri"], *rest]
    return found.get("host"), rest


def run() -> None:
    host, argv = take_host_option(take_output_flags(sys.argv[1:]))
    state.host = host
    try:
        app(args=argv)
    finally:
        state.close()


if __name__ == "__main__":
    run()
