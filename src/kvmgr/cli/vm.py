"""``kvmgr vm``: create, run and inspect VMs.  Each command is one service call."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from kvmgr.cli.common import authz, conn, journaled, report_errors, vm_lease
from kvmgr.cli.common import state as cli_state
from kvmgr.cli.objects import forget, record_vm
from kvmgr.cli.output import (
    OutputFormat,
    OutputOption,
    console,
    emit_object,
    emit_rows,
    status,
)
from kvmgr.cli.vm_place import join_group, place
from kvmgr.errors import InvalidInput
from kvmgr.names import AUTO_HOST
from kvmgr.services import vms
from kvmgr.units import format_size, parse_size

app = typer.Typer(no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="VM name")]


@app.command("list")
@report_errors
def list_cmd(
    output: OutputFormat = OutputOption,
    ips: Annotated[
        bool, typer.Option("--ips/--no-ips", help="discover IPs (one call per running VM)")
    ] = True,
    all_hosts: Annotated[
        bool,
        typer.Option(
            "--all-hosts",
            help="every registered host, queried in parallel; a host that does not answer "
            "within KVMGR_HOST_TIMEOUT seconds is listed as unreachable",
        ),
    ] = False,
) -> None:
    """List every VM (those made by virt-install or virsh too)."""
    columns = ["name", "state", "vcpus", "memory", "ips", "autostart"]
    if all_hosts:
        from kvmgr.connect.bounded import host_timeout
        from kvmgr.control.fleet import list_fleet
        from kvmgr.control.host_lookup import quick_hosts

        known = quick_hosts()  # without SQLAlchemy when it can; last_seen is the registry's
        if known is not None:
            rows, down = list_fleet(known, host_timeout(), with_ips=ips)
        else:
            rows, down = cli_state.hosts().fleet_vms(with_ips=ips)
        # a host that did not answer is a row too, so no reader mistakes it for a host without VMs
        rows += [{"host": d["host"], "state": "unreachable", "error": d["error"]} for d in down]
        columns = ["host", *columns, "error"] if down else ["host", *columns]
    else:
        rows = [row.as_dict() for row in vms.list_vms(conn(), with_ips=ips)]
    if output.for_people:
        for row in rows:
            row["memory"] = format_size(row["memory"]) if row.get("memory") else None
            row["state"] = vms.describe_state(row["state"], row.get("state_reason"))
    emit_rows(rows, output, columns)


@app.command()
@report_errors
def info(name: NameArg, output: OutputFormat = OutputOption) -> None:
    """Show one VM: resources, disks, NICs, consoles, IPs."""
    data = vms.vm_info(conn(), name)
    plane = cli_state.plane()
    data["busy"] = plane.busy(plane.vm_key(cli_state.host_name(), name))
    if output.for_people:
        for key in ("memory", "max_memory"):
            if data.get(key):
                data[key] = format_size(data[key])
        data["state"] = vms.describe_state(data["state"], data.pop("state_reason", None))
    emit_object(data, output)


_CREATE_HELP = (
    "Create a VM from an ISO (optionally installed unattended) or from a cloud image.\n\n"
    "The VM can grow live up to its ceilings ('kvmgr vm set NAME --vcpus N --memory SIZE'): "
    "by default as many vCPUs as the host has CPUs (never fewer than --vcpus) and twice "
    "--memory through the virtio balloon (at most the host's memory).  A guest without virtio "
    "drivers gets --memory as its ceiling, a legacy 'pc' guest --vcpus.  Raising a ceiling "
    "later needs a restart ('vm set --config --max-vcpus/--max-memory', then restart)."
)


@app.command(help=_CREATE_HELP)
@report_errors
def create(
    name: NameArg,
    iso: Annotated[
        str | None, typer.Option(help="imported ISO name or path to an .iso file")
    ] = None,
    import_iso: Annotated[
        bool,
        typer.Option(
            "--import",
            help="copy the --iso file into the ISO library first (for a file QEMU cannot "
            "reach, e.g. in /root; the library is readable by QEMU)",
        ),
    ] = False,
    os: Annotated[
        str, typer.Option("--os", help="auto (detect from the ISO) or an osinfo short id")
    ] = "auto",
    memory: Annotated[
        str | None, typer.Option(help="e.g. 2G (default: what the OS recommends)")
    ] = None,
    max_memory: Annotated[
        str | None,
        typer.Option(
            help="ceiling for live memory changes (balloon; default: twice --memory, at most "
            "the host's memory; --memory for a guest without virtio)"
        ),
    ] = None,
    vcpus: Annotated[int | None, typer.Option(help="vCPUs at boot")] = None,
    max_vcpus: Annotated[
        int | None,
        typer.Option(
            help="ceiling for vCPU hot-plug (default: the host's CPU count, never below "
            "--vcpus; --vcpus for a legacy 'pc' guest)"
        ),
    ] = None,
    disk: Annotated[
        list[str] | None,
        typer.Option(help="20G | pool=P,size=S,format=qcow2 | path=PATH | none (repeatable)"),
    ] = None,
    network: Annotated[
        list[str] | None,
        typer.Option(help="default | NAME | bridge=br0 | none, plus ,model=,mac= (repeatable)"),
    ] = None,
    graphics: Annotated[str, typer.Option(help="vnc (unix socket only) or none")] = "vnc",
    firmware: Annotated[str, typer.Option(help="bios or uefi")] = "bios",
    start: Annotated[bool, typer.Option("--start/--no-start")] = True,
    wait: Annotated[
        str,
        typer.Option(
            help="none; ip (an address seen: lease, agent, ARP); ready (the first of: kvmgr's "
            "console marker, the guest agent answering, an SSH banner on the guest's address); "
            "--unattended: installed or ready (Windows also started: return once Setup runs)"
        ),
    ] = "none",
    wait_timeout: Annotated[float, typer.Option(help="seconds to wait")] = 300.0,
    unattended: Annotated[
        bool, typer.Option("--unattended", help="install the ISO's OS with an install script")
    ] = False,
    image: Annotated[
        str | None, typer.Option(help="cloud image from 'kvmgr image list' (instead of --iso)")
    ] = None,
    cloud_init: Annotated[
        bool, typer.Option("--cloud-init", help="attach a cloud-init NoCloud seed (--image)")
    ] = False,
    user: Annotated[str | None, typer.Option(help="a user to create (sudo/wheel)")] = None,
    password_file: Annotated[
        str | None, typer.Option(help="file whose first line is --user's password")
    ] = None,
    root_password_file: Annotated[
        str | None, typer.Option(help="file whose first line is root's password")
    ] = None,
    ssh_key: Annotated[
        list[str] | None, typer.Option(help="public key file to authorise (repeatable)")
    ] = None,
    hostname: Annotated[str | None, typer.Option(help="guest host name (default: VM name)")] = None,
    timezone: Annotated[str, typer.Option(help="--unattended: time zone")] = "UTC",
    locale: Annotated[str, typer.Option(help="--unattended: locale")] = "en_US",
    packages: Annotated[
        str | None, typer.Option(help="--unattended: extra packages, comma-separated")
    ] = None,
    profile: Annotated[str, typer.Option(help="--unattended: minimal or desktop")] = "minimal",
    script: Annotated[
        str | None, typer.Option(help="--unattended: your own kickstart/preseed file")
    ] = None,
    product_key: Annotated[
        str | None,
        typer.Option(
            help="--unattended Windows: product key (XXXXX-XXXXX-...); shows in process "
            "listings, --product-key-file does not"
        ),
    ] = None,
    product_key_file: Annotated[
        str | None, typer.Option(help="--unattended Windows: a file with the product key")
    ] = None,
    user_data: Annotated[
        str | None, typer.Option(help="--cloud-init: your user-data (merged with the options)")
    ] = None,
    network_config: Annotated[
        str | None, typer.Option(help="--cloud-init: network-config v2 (matched to NICs by MAC)")
    ] = None,
    require: Annotated[
        str | None, typer.Option(help="with --host auto: labels k=v,k2=v2 the host needs")
    ] = None,
    group: Annotated[str | None, typer.Option(help="placement group of the VM")] = None,
    anti_affinity: Annotated[
        bool, typer.Option("--anti-affinity", help="never two VMs of --group on one host")
    ] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="with --host auto: every host and why (not) picked")
    ] = False,
    output: OutputFormat = OutputOption,
) -> None:
    """Create a VM from an ISO (optionally installed unattended) or from a cloud image.

    --host auto lets placement pick the host: by free memory and CPU load, honouring
    --require labels, --group/--anti-affinity and maintenance mode (--explain says why).
    """
    from kvmgr.control.authz import check_vm_spec
    from kvmgr.services.create import VMSpec, create_vm, parse_disk_option, parse_network_option

    if import_iso:
        if iso is None:
            raise InvalidInput("--import needs --iso PATH", hint="give the .iso file to import")
        iso = _import_into_library(iso)
    disks = [parsed for text in (disk or []) if (parsed := parse_disk_option(text)) is not None]
    nics = [nic for text in (network or []) if (nic := parse_network_option(text)) is not None]
    spec = VMSpec(
        name=name,
        iso=iso,
        os=os,
        memory=parse_size(memory, what="memory", default_unit="M") if memory else None,
        max_memory=parse_size(max_memory, what="max memory", default_unit="M")
        if max_memory
        else None,
        vcpus=vcpus,
        max_vcpus=max_vcpus,
        graphics=graphics,
        firmware=firmware,
        start=start,
        wait=wait,
        wait_timeout=wait_timeout,
    )
    if disk is not None:
        spec.disks = disks
    if network is not None:
        spec.nics = nics
    if cli_state.host == AUTO_HOST:
        place(spec, require, group, anti_affinity, explain=explain)
    check_vm_spec(authz(), spec)  # paths resolved; system files and templates' disks refused
    if unattended or image:
        from kvmgr.cli.vm_provision import provision

        options = {
            "unattended": unattended, "image": image, "cloud_init": cloud_init, "user": user,
            "password_file": password_file, "root_password_file": root_password_file,
            "ssh_keys": ssh_key or [], "hostname": hostname, "timezone": timezone,
            "locale": locale, "packages": packages, "profile": profile, "script": script,
            "user_data": user_data, "network_config": network_config,
            "product_key": product_key, "product_key_file": product_key_file,
        }  # fmt: skip
        # Journaled like every create: a kill -9 mid-install is undone by recovery.
        with journaled("create", name, new_names=(name,)) as steps:
            data = provision(spec, options, steps)
        record_vm(name)
        if group:
            join_group(name, group, anti_affinity)
        emit_object(data, output)
        return
    with (
        status(f"creating {name}") as spinner,
        journaled("create", name, new_names=(name,), say=spinner.update) as steps,
    ):
        result = create_vm(conn(), spec, progress=spinner.update, steps=steps)
    record_vm(result.name)
    if group:
        join_group(name, group, anti_affinity)
    typer.echo(f"domain type: {result.domain_type} ({result.domain_type_reason})", err=True)
    data = result.__dict__.copy()
    if output.for_people:
        data["memory"] = format_size(result.memory)
        data["max_memory"] = format_size(result.max_memory)
        data["seconds"] = f"{result.seconds:.1f}"
    emit_object(data, output)


def _import_into_library(path: str) -> str:
    """Import ``path`` into the ISO library (or find it there already); its library name."""
    from pathlib import Path

    from kvmgr.services import isos

    source = Path(authz().import_source(str(Path(path).absolute())))  # never a system file
    existing = {info.name: info for info in isos.list_isos(conn())}
    same = existing.get(source.name)
    if same is not None:
        if same.size != source.stat().st_size:
            raise InvalidInput(
                f"the ISO library has another {source.name} ({format_size(same.size)})",
                hint="import this file under another name: 'kvmgr iso import PATH --name NAME'",
            )
        console.print(f"using {source.name} of the ISO library", highlight=False)
        return same.name
    from kvmgr.cli.objects import journaled as object_journaled
    from kvmgr.cli.objects import record
    from kvmgr.control.objects import iso_key

    with (
        status(f"importing {source.name} into the ISO library"),
        object_journaled("iso import", source.name, lambda h: iso_key(h, source.name)) as steps,
    ):
        info = isos.import_iso(conn(), source, steps=steps)
    record("iso", info.name)
    console.print(f"imported {source} into the ISO library as {info.name}", highlight=False)
    return info.name


def _lifecycle(verb: str, action: str, help_text: str) -> None:
    def command(name: NameArg) -> None:
        with vm_lease(name, action.replace("_", "-")):
            getattr(vms, action)(conn(), name)
        console.print(f"{name}: {verb}")

    command.__doc__ = help_text
    app.command(action.replace("_", "-") if action != "force_off" else "off")(
        report_errors(command)
    )


_lifecycle("rebooting", "reboot", "Ask the guest to reboot (ACPI).")
_lifecycle("reset", "reset", "Hard-reset a VM (like the reset button).")
_lifecycle("powered off", "force_off", "Power a VM off at once (like pulling the plug).")
_lifecycle("paused", "pause", "Pause a running VM.")
_lifecycle("resumed", "resume", "Resume a paused VM.")


@app.command()
@report_errors
def start(
    name: NameArg,
    wait: Annotated[
        str,
        typer.Option(
            help="none; ip (an address seen: lease, agent, ARP); ready (the first of: kvmgr's "
            "console marker, the guest agent answering, an SSH banner on the guest's address)"
        ),
    ] = "none",
    timeout: Annotated[float, typer.Option(help="seconds --wait waits")] = 300.0,
    attach: Annotated[
        bool,
        typer.Option("--console", help="attach the serial console (from the first line)"),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="--console: take it over from another session")
    ] = False,
) -> None:
    """Start a VM; --wait ip|ready waits for the guest and says what it saw."""
    from kvmgr.services import readiness

    if attach:
        from kvmgr.services.console import attach_interactive

        if wait != "none":
            raise InvalidInput(
                "--console and --wait do not go together",
                hint="--console shows the boot as it happens; drop one of them",
            )
        with vm_lease(name, "start"):  # not held while the console is open: that is not work
            dom = readiness.start_paused(conn(), name)
        readiness.attach_then_resume(
            dom, lambda resume: attach_interactive(conn(), name, force=force, attached=resume)
        )
        return
    with vm_lease(name, "start"), status(f"starting {name}") as spinner:
        seen = readiness.start_vm(conn(), name, wait, timeout, progress=spinner.update)
    console.print(f"{name}: started", highlight=False)
    if seen is not None:
        console.print(f"{name}: {seen}", highlight=False)


@app.command()
@report_errors
def shutdown(
    name: NameArg,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the guest")] = 120.0,
    force: Annotated[
        bool, typer.Option(help="power off when the guest does not shut down")
    ] = False,
) -> None:
    """Ask the guest to shut down (ACPI) and wait; --force powers off after the timeout."""
    with vm_lease(name, "shutdown"):
        outcome = vms.shutdown(conn(), name, timeout=timeout, force=force)
    console.print(f"{name}: {outcome}")


@app.command()
@report_errors
def autostart(name: NameArg, enabled: Annotated[str, typer.Argument(help="on or off")]) -> None:
    """Start the VM when the host (libvirtd) starts: on or off."""
    if enabled not in ("on", "off"):
        raise typer.BadParameter("use 'on' or 'off'")
    with vm_lease(name, f"autostart {enabled}"):
        vms.set_autostart(conn(), name, enabled == "on")
    console.print(f"{name}: autostart {enabled}")


@app.command()
@report_errors
def delete(
    name: NameArg,
    force: Annotated[bool, typer.Option(help="power off a running VM first")] = False,
    keep_disks: Annotated[bool, typer.Option(help="keep the disks kvmgr created for it")] = False,
) -> None:
    """Delete a VM and the disks kvmgr created for it (never ISOs or disks others use)."""
    disks = [
        str(disk["source"])
        for disk in vms.vm_info(conn(), name)["disks"]
        if disk["device"] == "disk" and disk["source"]
    ]
    uuid = str(vms.lookup(conn(), name).UUIDString())
    with journaled("delete", name, vms=(name,)) as steps:
        removed = vms.delete(conn(), name, force=force, keep_disks=keep_disks, steps=steps)
    forget("vm", uuid)
    forget("volume", *removed)
    console.print(f"{name}: deleted" + (f"; removed {', '.join(removed)}" if removed else ""))
    kept = [path for path in disks if path not in removed]
    if kept:
        # A VM made by virt-install or by hand: its disks are not kvmgr's to remove.
        why = "as asked" if keep_disks else "kvmgr did not create them"
        console.print(f"kept {', '.join(kept)} ({why})", highlight=False)
        console.print(
            "remove one with 'kvmgr vol delete POOL NAME' ('kvmgr vol list POOL' shows it) "
            "once nothing uses it",
            highlight=False,
        )


@app.command()
@report_errors
def state(name: NameArg) -> None:
    """Print the VM's state (running, shut off, paused, ...)."""
    typer.echo(vms.state(conn(), name))


# Commands that change a VM's configuration, its definition, and stats live in their own module.
for _module in (
    "kvmgr.cli.vm_config",
    "kvmgr.cli.vm_console",
    "kvmgr.cli.vm_clone",
    "kvmgr.cli.vm_migrate",
    "kvmgr.cli.vm_habits",
    "kvmgr.cli.vm_vnc",
):
    try:
        importlib.import_module(_module).register(app)
    except ModuleNotFoundError as _err:
        if _err.name != _module:
            raise
