"""``kvmgr vm set|disk|nic|ip|xml|define|edit|stats``: change a VM, its definition, watch it.

Registered into the ``vm`` group by :mod:`kvmgr.cli.vm`.  Each command is one service call.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from kvmgr.cli.common import authz, conn, journaled, report_errors, state, vm_lease
from kvmgr.cli.output import (
    OutputFormat,
    OutputOption,
    console,
    emit_object,
    emit_rows,
    err_console,
)
from kvmgr.errors import InvalidInput
from kvmgr.units import format_size, parse_size

NameArg = Annotated[str, typer.Argument(help="VM name")]
LiveOption = Annotated[bool, typer.Option("--live", help="change the running guest")]
ConfigOption = Annotated[bool, typer.Option("--config", help="change the definition (next boot)")]

disk_app = typer.Typer(no_args_is_help=True, help="Add, remove and grow a VM's disks.")
nic_app = typer.Typer(no_args_is_help=True, help="Add and remove a VM's network interfaces.")


def _sizes_for_people(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {
        key: format_size(value) if key in keys and isinstance(value, int) else value
        for key, value in data.items()
    }


# ------------------------------------------------------------------------------------ set
@report_errors
def set_cmd(
    name: NameArg,
    vcpus: Annotated[int | None, typer.Option(help="vCPUs (hotplug up to the maximum)")] = None,
    memory: Annotated[str | None, typer.Option(help="memory, e.g. 1G (balloon)")] = None,
    max_vcpus: Annotated[
        int | None, typer.Option(help="maximum vCPUs (definition only: VM shut off/--config)")
    ] = None,
    max_memory: Annotated[
        str | None, typer.Option(help="maximum memory (definition only: VM shut off/--config)")
    ] = None,
    live: LiveOption = False,
    config: ConfigOption = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Change vCPUs and memory. Without --live/--config: both when running, else the definition."""
    from kvmgr.services.resources import set_resources

    with vm_lease(name, "vcpu/memory change"):
        result = set_resources(
            conn(),
            name,
            vcpus=vcpus,
            memory=parse_size(memory, what="memory", default_unit="M") if memory else None,
            max_vcpus=max_vcpus,
            max_memory=parse_size(max_memory, what="max memory", default_unit="M")
            if max_memory
            else None,
            live=live,
            config=config,
        )
    data = result.as_dict()
    if output.for_people:
        data = _sizes_for_people(data, ("memory_live", "memory_config", "max_memory"))
    emit_object(data, output)


# ------------------------------------------------------------------------------------ disks
@disk_app.command("add")
@report_errors
def disk_add(
    name: NameArg,
    size: Annotated[str | None, typer.Option(help="size of a new volume, e.g. 10G")] = None,
    path: Annotated[str | None, typer.Option(help="an existing volume's path")] = None,
    pool: Annotated[str, typer.Option(help="pool for a new volume")] = "default",
    fmt: Annotated[str, typer.Option("--format", help="qcow2 or raw (new volume)")] = "qcow2",
    bus: Annotated[str, typer.Option(help="virtio, scsi or sata")] = "virtio",
    live: LiveOption = False,
    config: ConfigOption = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Attach a new volume (named after the VM, deleted with it) or an existing one."""
    from kvmgr.services.resources import add_disk

    if path is not None:  # resolved; system files and templates' disks refused
        path = authz().disk(path).path
    with journaled("disk add", name, vms=(name,)) as steps:
        result = add_disk(
            conn(),
            name,
            size=parse_size(size, what="disk size", default_unit="G") if size else None,
            path=path,
            pool=pool,
            fmt=fmt,
            bus=bus,
            live=live,
            config=config,
            steps=steps,
        )
    if result.path and result.owned:  # a volume made for the VM: the CLI's, like the VM
        from kvmgr.cli.objects import record

        record("volume", result.path)
    emit_object(result.as_dict(), output)


@disk_app.command("remove")
@report_errors
def disk_remove(
    name: NameArg,
    target: Annotated[str, typer.Argument(help="disk target, e.g. vdb")],
    delete_volume: Annotated[
        bool, typer.Option(help="delete the volume too (only one kvmgr created for this VM)")
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the guest")] = 30.0,
    live: LiveOption = False,
    config: ConfigOption = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Detach a disk, waiting for the guest to release it."""
    from kvmgr.services.resources import remove_disk

    with journaled("disk remove", name, vms=(name,)) as steps:
        result = remove_disk(
            conn(),
            name,
            target,
            delete_volume=delete_volume,
            live=live,
            config=config,
            timeout=timeout,
            steps=steps,
        )
    if result.volume_deleted and result.path:
        from kvmgr.cli.objects import forget

        forget("volume", result.path)
    emit_object(result.as_dict(), output)


@disk_app.command("resize")
@report_errors
def disk_resize(
    name: NameArg,
    target: Annotated[str, typer.Argument(help="disk target, e.g. vda")],
    size: Annotated[str, typer.Argument(help="new size, e.g. 20G (never smaller)")],
    output: OutputFormat = OutputOption,
) -> None:
    """Grow a disk: live when the VM runs, the volume when it is off."""
    from kvmgr.services.resources import resize_disk

    with vm_lease(name, "disk resize"):
        result = resize_disk(conn(), name, target, parse_size(size, what="size", default_unit="G"))
    data = result.as_dict()
    if output.for_people:
        data = _sizes_for_people(data, ("capacity",))
    emit_object(data, output)


# ------------------------------------------------------------------------------------ NICs
@nic_app.command("add")
@report_errors
def nic_add(
    name: NameArg,
    network: Annotated[str | None, typer.Option(help="libvirt network")] = None,
    bridge: Annotated[str | None, typer.Option(help="host bridge")] = None,
    model: Annotated[
        str | None, typer.Option(help="virtio, e1000e, e1000, rtl8139 (default: as other NICs)")
    ] = None,
    mac: Annotated[str | None, typer.Option(help="MAC address (default: a fresh one)")] = None,
    live: LiveOption = False,
    config: ConfigOption = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Plug a NIC into a network or bridge."""
    from kvmgr.control.objects import net_key
    from kvmgr.services.resources import add_nic

    # The network is used (its delete waits) from before add_nic checks it until it is plugged.
    uses = [net_key(state.host_name(), network)] if network is not None else []
    with vm_lease(name, "NIC add"), state.plane().using(uses, f"NIC add {name}"):
        result = add_nic(
            conn(),
            name,
            network=network,
            bridge=bridge,
            model=model,
            mac=mac,
            live=live,
            config=config,
        )
    emit_object(result.as_dict(), output)


@nic_app.command("remove")
@report_errors
def nic_remove(
    name: NameArg,
    mac: Annotated[str, typer.Argument(help="MAC address of the NIC")],
    timeout: Annotated[float, typer.Option(help="seconds to wait for the guest")] = 30.0,
    live: LiveOption = False,
    config: ConfigOption = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Unplug a NIC, waiting for the guest to release it."""
    from kvmgr.services.resources import remove_nic

    with vm_lease(name, "NIC remove"):
        result = remove_nic(conn(), name, mac, live=live, config=config, timeout=timeout)
    emit_object(result.as_dict(), output)


# ------------------------------------------------------------------------------------ ip
@report_errors
def ip_cmd(
    name: NameArg,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            help="seconds to wait for an address, listening to the guest's DHCP and ARP "
            "traffic meanwhile (bridged guests; local daemon, root)",
            min=0,
        ),
    ] = 0.0,
    output: OutputFormat = OutputOption,
) -> None:
    """Show the VM's IP addresses and where each was found (lease, agent, arp, neighbour,
    dhcp-snoop, arp-snoop)."""
    from kvmgr.services.resources import addresses

    emit_rows(addresses(conn(), name, wait=wait), output, ["mac", "ip", "source"])


# ------------------------------------------------------------------------------------ definitions
@report_errors
def xml_cmd(
    name: NameArg,
    inactive: Annotated[
        bool, typer.Option("--inactive", help="the definition for the next boot")
    ] = False,
) -> None:
    """Print the definition libvirt keeps for the VM."""
    from kvmgr.services.definitions import vm_xml

    typer.echo(vm_xml(conn(), name, inactive=inactive), nl=False)


@report_errors
def define_cmd(
    file: Annotated[Path, typer.Argument(help="domain XML file ('-' for stdin)")],
) -> None:
    """Import a VM definition after validating it against libvirt's schema."""
    from kvmgr.control.authz import check_definition
    from kvmgr.services.definitions import check_document, define_vm

    text = sys.stdin.read() if str(file) == "-" else _read_file(file)
    check_definition(authz(), check_document(text))  # its files resolved and checked
    result = define_vm(conn(), text)
    console.print(f"{result.name}: defined ({result.uuid})", highlight=False)


def _read_file(file: Path) -> str:
    try:
        return file.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"cannot read {file}: {err}") from err


@report_errors
def edit_cmd(name: NameArg) -> None:
    """Edit the VM's definition in $EDITOR; an invalid result is refused, the old one kept."""
    import click  # only the editor command needs it

    from kvmgr.control.authz import check_definition, disk_paths
    from kvmgr.services.definitions import check_document, editable_xml, replace_definition

    text = editable_xml(conn(), name)
    current = disk_paths(check_document(text))
    while True:
        try:
            edited = click.edit(text, extension=".xml", require_save=True)
        except click.ClickException as err:  # click's own, which Typer does not report
            raise InvalidInput(
                f"the editor failed: {err.format_message()}",
                hint="set $EDITOR (or $VISUAL) to an editor that exits 0 after saving",
            ) from err
        if edited is None or edited == text:
            console.print(f"{name}: unchanged")
            return
        try:
            check_definition(authz(), check_document(edited), keep=current)
            with vm_lease(name, "edit"):
                result = replace_definition(conn(), name, edited)
        except InvalidInput as err:
            if not (sys.stdin.isatty() and sys.stdout.isatty()):
                raise
            err_console.print(f"[bold red]error:[/] {err}", highlight=False)
            if not typer.confirm("Edit again?", default=True):
                raise
            text = edited  # reopen with the person's changes, not the original
            continue
        console.print(f"{name}: " + ("definition changed" if result.changed else "unchanged"))
        return


# ------------------------------------------------------------------------------------ stats
_STATS_COLUMNS = ["name", "state", "cpu", "memory", "disk_read", "disk_write", "net_rx", "net_tx"]


def _stats_rows(items: list[Any], output: OutputFormat) -> list[dict[str, Any]]:
    if not output.for_people:
        return [item.as_dict() for item in items]
    return [
        {
            "name": item.name,
            "state": item.state,
            "cpu": None if item.cpu_percent is None else f"{item.cpu_percent:.1f}%",
            "memory": _memory_cell(item.memory_used, item.memory_total),
            "disk_read": _rate_cell(item.disk_read_bps),
            "disk_write": _rate_cell(item.disk_write_bps),
            "net_rx": _rate_cell(item.net_rx_bps),
            "net_tx": _rate_cell(item.net_tx_bps),
        }
        for item in items
    ]


def _rate_cell(value: float | None) -> str | None:
    return None if value is None else f"{format_size(round(value))}/s"


def _memory_cell(used: int | None, total: int | None) -> str | None:
    if total is None:
        return None
    return f"{format_size(used)} / {format_size(total)}" if used is not None else format_size(total)


@report_errors
def stats_cmd(
    names: Annotated[list[str] | None, typer.Argument(help="VM names (default: all)")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh until Ctrl+C")] = False,
    interval: Annotated[float, typer.Option(help="seconds between samples")] = 1.0,
    output: OutputFormat = OutputOption,
) -> None:
    """CPU %, memory, disk and network rates of VMs (one libvirt call per sample)."""
    from kvmgr.services import stats

    if not watch:
        rows = _stats_rows(stats.sample_rates(conn(), names, interval=interval), output)
        emit_rows(rows, output, _STATS_COLUMNS)
        return
    if not output.for_people:
        raise InvalidInput("--watch shows a live table", hint="drop -o, or drop --watch")
    _watch(names, interval)


def _watch(names: list[str] | None, interval: float) -> None:
    from rich.live import Live
    from rich.table import Table

    from kvmgr.services import stats

    def table(items: list[stats.VMRates]) -> Table:
        view = Table(header_style="bold", title=f"every {interval:g} s, Ctrl+C to stop")
        for column in _STATS_COLUMNS:
            view.add_column(column.upper().replace("_", " "))
        for row in _stats_rows(items, OutputFormat.table):
            view.add_row(*(str(row[column] or "-") for column in _STATS_COLUMNS))
        return view

    previous = stats.collect(conn(), names)
    with Live(table([]), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                current = stats.collect(conn(), names)
                live.update(table(stats.rates(previous, current)), refresh=True)
                previous = current
        except KeyboardInterrupt:
            return


# ------------------------------------------------------------------------------------ register
def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``vm`` group."""
    app.command("set")(set_cmd)
    app.add_typer(disk_app, name="disk")
    app.add_typer(nic_app, name="nic")
    app.command("ip")(ip_cmd)
    app.command("xml")(xml_cmd)
    app.command("define")(define_cmd)
    app.command("edit")(edit_cmd)
    app.command("stats")(stats_cmd)
