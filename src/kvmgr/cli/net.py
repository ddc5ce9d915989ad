"""``kvmgr net``: virtual networks, DHCP reservations and leases (translation only)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kvmgr.cli.common import conn, report_errors
from kvmgr.cli.objects import (
    GroupOption,
    NoGroupOption,
    busy,
    change_group,
    forget,
    held,
    journaled,
    owner_fields,
    record,
)
from kvmgr.cli.output import OutputFormat, OutputOption, console, emit_object, emit_rows
from kvmgr.control.objects import check_group, net_key
from kvmgr.services import network_subnets, networks

app = typer.Typer(no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="network name")]
_LIST_COLUMNS = ["name", "mode", "subnet", "bridge", "active", "autostart", "vms"]


def _info_dict(info: networks.NetworkInfo) -> dict[str, Any]:
    data = info.as_dict()
    data["dhcp_range"] = f"{info.dhcp_start}-{info.dhcp_end}" if info.dhcp_start else None
    del data["dhcp_start"], data["dhcp_end"]
    return data


@app.command("create")
@report_errors
def create(
    name: Name,
    mode: Annotated[
        str, typer.Option("--mode", "-m", help="nat, isolated, routed or bridge")
    ] = "nat",
    subnet: Annotated[
        str | None, typer.Option(help="IPv4 subnet, e.g. 10.20.0.0/24 (default: a free /24)")
    ] = None,
    dhcp_range: Annotated[
        str | None, typer.Option("--dhcp-range", help="START-END (default .100-.254 of a /24)")
    ] = None,
    bridge: Annotated[
        str | None,
        typer.Option(
            help="mode bridge: existing host bridge; other modes: name for libvirt's bridge"
        ),
    ] = None,
    domain: Annotated[str | None, typer.Option(help="DNS domain served to guests")] = None,
    autostart: Annotated[bool, typer.Option(help="start with the host")] = True,
    subnet_from: Annotated[
        str,
        typer.Option("--subnet-from", help="comma-separated CIDRs to pick a free /24 from"),
    ] = network_subnets.DEFAULT_SUBNET_SEARCH,
    group: GroupOption = None,
    output: OutputFormat = OutputOption,
) -> None:
    """Create and start a network."""
    check_group(group)
    spec = networks.NetworkSpec(
        name=name,
        mode=mode,
        subnet=subnet,
        dhcp_range=dhcp_range,
        bridge=bridge,
        domain=domain,
        autostart=autostart,
        subnet_search=subnet_from,
    )
    with journaled("net create", name, lambda host: net_key(host, name)) as steps:
        made = networks.create_network(conn(), spec, steps=steps)
    record("network", name, group=group)
    emit_object(_info_dict(made), output)


@app.command("list")
@report_errors
def list_(output: OutputFormat = OutputOption) -> None:
    """Networks with mode, subnet, bridge, state and the VMs attached."""
    rows = [_info_dict(info) for info in networks.list_networks(conn())]
    emit_rows(rows, output, _LIST_COLUMNS)


@app.command("info")
@report_errors
def info(name: Name, output: OutputFormat = OutputOption) -> None:
    """Everything about one network, reservations included, who owns it and who works on it."""
    data = _info_dict(networks.network_info(conn(), name))
    data.update(owner_fields("network", name))
    data["busy"] = busy(lambda host: net_key(host, name))
    emit_object(data, output)


@app.command("set")
@report_errors
def set_(name: Name, group: GroupOption = None, no_group: NoGroupOption = False) -> None:
    """Change who may use a network: its group (admins only, as the CLI's caller is)."""
    change_group(
        "network", name, group, no_group,
        key=lambda host: net_key(host, name), exists=lambda: networks.network_info(conn(), name),
    )  # fmt: skip


@app.command("start")
@report_errors
def start(name: Name) -> None:
    """Start a stopped network."""
    with held(lambda host: net_key(host, name), "start"):
        networks.start_network(conn(), name)
    console.print(f"network {name} started", highlight=False)


@app.command("stop")
@report_errors
def stop(
    name: Name,
    force: Annotated[bool, typer.Option(help="stop even while running VMs use it")] = False,
) -> None:
    """Stop a network (refused while running VMs use it)."""
    with held(lambda host: net_key(host, name), "stop"):
        networks.stop_network(conn(), name, force=force)
    console.print(f"network {name} stopped", highlight=False)


@app.command("autostart")
@report_errors
def autostart(
    name: Name,
    disable: Annotated[bool, typer.Option("--disable", help="do not start with the host")] = False,
) -> None:
    """Start the network when the host (libvirtd) starts."""
    with held(lambda host: net_key(host, name), "autostart"):
        networks.set_autostart(conn(), name, not disable)
    console.print(f"network {name} autostart {'off' if disable else 'on'}", highlight=False)


@app.command("delete")
@report_errors
def delete(
    name: Name,
    force: Annotated[bool, typer.Option(help="delete even while VMs use it")] = False,
) -> None:
    """Stop and remove a network (refused while VMs use it)."""
    with journaled("net delete", name, lambda host: net_key(host, name), sole=True) as steps:
        networks.delete_network(conn(), name, force=force, steps=steps)
    forget("network", name)
    console.print(f"network {name} deleted", highlight=False)


@app.command("reserve")
@report_errors
def reserve(
    name: Name,
    ip: Annotated[str, typer.Option(help="the fixed IPv4 address")],
    mac: Annotated[str | None, typer.Option(help="MAC address of the guest NIC")] = None,
    vm: Annotated[str | None, typer.Option(help="VM whose NIC on this network gets the IP")] = None,
    hostname: Annotated[str | None, typer.Option(help="DNS name for the address")] = None,
    output: OutputFormat = OutputOption,
) -> None:
    """Reserve a DHCP address for a MAC or VM, live and persistently."""
    with held(lambda host: net_key(host, name), f"reserve {ip}"):
        found = networks.reserve(conn(), name, ip, mac=mac, vm=vm, hostname=hostname)
    emit_object(vars(found), output)


@app.command("unreserve")
@report_errors
def unreserve(
    name: Name,
    mac: Annotated[str | None, typer.Option(help="MAC address of the reservation")] = None,
    ip: Annotated[str | None, typer.Option(help="IP address of the reservation")] = None,
    vm: Annotated[str | None, typer.Option(help="VM whose reservation to remove")] = None,
) -> None:
    """Remove a DHCP reservation, live and persistently."""
    with held(lambda host: net_key(host, name), "unreserve"):
        gone = networks.unreserve(conn(), name, mac=mac, ip=ip, vm=vm)
    console.print(f"reservation {gone.ip} for {gone.mac} removed from {name}", highlight=False)


@app.command("leases")
@report_errors
def leases(name: Name, output: OutputFormat = OutputOption) -> None:
    """Current DHCP leases of a network."""
    rows = [vars(lease) for lease in networks.leases(conn(), name)]
    emit_rows(rows, output, ["mac", "ip", "hostname", "expires", "interface"])
