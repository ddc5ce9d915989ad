"""Creating a VM: make its volumes and its libvirt definition, start it, wait for it.

What the VM gets (machine type, buses, NIC model, firmware per OS) is decided in
:mod:`kvmgr.services.create_policy`; this module makes it, recording in the operation's journal
(:mod:`kvmgr.services.steps`), before each step acts, how to undo it.  A create that fails, or is
killed at any point, leaves nothing behind once the journal is finished or undone.
"""

from __future__ import annotations

import os
import time
import uuid as uuid_module
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import (
    AlreadyExists,
    InvalidInput,
    KvmgrError,
    NotFound,
    libvirt_errors,
)
from kvmgr.names import validate_name
from kvmgr.osinfo import OSProfile
from kvmgr.services import vm_removal as _registers_domain_actions  # noqa: F401
from kvmgr.services import vms
from kvmgr.services.create_policy import (
    FIRMWARES,
    GRAPHICS_MODES,
    HOTPLUG_PORTS,
    WAIT_MODES,
    DiskRequest,
    NicRequest,
    VMSpec,
    build_domain,
    check_host_support,
    check_nic_model,
    parse_disk_option,
    parse_network_option,
    root_ports_needed,
)
from kvmgr.services.inputs import use_definition
from kvmgr.services.steps import Steps, owned_steps
from kvmgr.services.storage import VolumeRef, create_volume, refuse_taken_name
from kvmgr.services.storage_pools import DEFAULT_POOL
from kvmgr.units import GIB, MIB, format_size

Progress = Callable[[str], None]
_MIN_MEMORY = 64 * MIB


@dataclass
class CreateResult:
    name: str
    uuid: str
    domain_type: str
    domain_type_reason: str
    os_id: str
    os_name: str
    memory: int
    vcpus: int
    volumes: list[str]
    state: str
    ip: str | None = None
    #: What ``--wait`` saw: "ready: ssh banner SSH-2.0-... at 192.168.122.5:22", "ip ... from lease"
    ready: str | None = None
    seconds: float = 0.0
    max_vcpus: int = 0  # the ceilings vm set can grow it to live (create_policy.default_ceilings)
    max_memory: int = 0


# ------------------------------------------------------------ create
def create_vm(
    conn: Connection,
    spec: VMSpec,
    progress: Progress | None = None,
    steps: Steps | None = None,
) -> CreateResult:
    """Create (and by default start) a VM.

    Before each step makes something, ``steps`` (the operation's journal; in-memory for library
    callers) records how to undo it: ``volume.delete`` per new volume, ``domain.undefine`` by the
    UUID kvmgr gives the VM.  A failure, or a killed process, leaves nothing once those are run.
    Once the VM has started the create is complete (``domain.keep``): a ``--wait`` that times out
    leaves the working VM and says so.
    """
    began = time.monotonic()
    say = progress or (lambda _message: None)
    _validate_request(conn, spec)
    iso_path = _resolve_iso(conn, spec.iso) if spec.iso else None
    if iso_path is not None:
        _check_qemu_can_read(conn, iso_path)
    profile = _choose_profile(spec.os, iso_path)
    memory = profile.recommended_memory if spec.memory is None else spec.memory
    vcpus = profile.recommended_vcpus if spec.vcpus is None else spec.vcpus
    _check_resources(conn, memory, spec.max_memory, vcpus, spec.max_vcpus)
    choice = conn.domain_type()
    say(f"domain type {choice.domain_type}: {choice.reason}")
    check_host_support(conn, spec, profile, choice.domain_type)
    disks = [_sized(request, profile.recommended_disk) for request in spec.disks]
    with owned_steps(conn, steps, say) as journal:
        # Held from here to the end against deletes by other processes (checked again before
        # the define, by use_definition): two creates on one network do not wait for each other.
        for nic in spec.nics:
            if nic.kind == "network":
                journal.uses("network", nic.source)
        for request in disks:
            if request.path is None:
                journal.uses("pool", request.pool)
        volumes = _create_volumes(conn, spec.name, disks, journal)
        domain = build_domain(
            conn, spec, profile, choice.domain_type, memory, vcpus, iso_path, disks, volumes
        )
        for customize in spec.customize:
            customize(domain)
        # kvmgr names the UUID, so the undo record exists before the VM does and names this VM
        # alone (a VM of the same name someone makes after a crash is not this one).
        domain.uuid = str(uuid_module.uuid4())
        journal.undo_with("domain.undefine", uuid=domain.uuid)
        use_definition(conn, journal, domain)
        journal.progress(f"defining VM {spec.name}")
        with libvirt_errors(f"defining VM {spec.name}"):
            dom = conn.virconn.defineXML(domain.to_xml())
        result = CreateResult(
            name=spec.name,
            uuid=domain.uuid,
            domain_type=choice.domain_type,
            domain_type_reason=choice.reason,
            os_id=profile.short_id,
            os_name=profile.name,
            memory=memory,
            vcpus=vcpus,
            volumes=[volume.path for volume in volumes],
            state="shut off",
            max_vcpus=domain.vcpus or vcpus,
            max_memory=domain.memory_bytes or memory,
        )
        if spec.start:
            journal.progress(f"starting VM {spec.name}")
            _start_and_wait(conn, dom, spec, journal, result)
            result.state = vms.STATE_NAMES[vms.state_of(dom)]
    result.seconds = time.monotonic() - began
    return result


def _validate_request(conn: Connection, spec: VMSpec) -> None:
    validate_name(spec.name, what="VM name")
    if spec.wait not in WAIT_MODES:
        raise InvalidInput(f"--wait {spec.wait!r} is not known", hint="use ready, ip or none")
    if spec.graphics not in GRAPHICS_MODES:
        raise InvalidInput(f"--graphics {spec.graphics!r} is not known", hint="use vnc or none")
    if spec.firmware not in FIRMWARES:
        raise InvalidInput(f"--firmware {spec.firmware!r} is not known", hint="use bios or uefi")
    if spec.wait_timeout <= 0:
        raise InvalidInput(
            f"--wait-timeout {spec.wait_timeout:g} must be greater than zero", hint="e.g. 300"
        )
    if spec.wait != "none" and not spec.start:
        raise InvalidInput(
            "--wait needs the VM to start", hint="drop --no-start or use --wait none"
        )
    if vms.exists(conn, spec.name):
        raise AlreadyExists(
            f"a VM named {spec.name!r} already exists",
            hint="choose another name or delete it first",
        )
    for nic in spec.nics:
        check_nic_model(nic.model)
        if nic.kind == "network":
            _require_network(conn, nic.source)
        elif nic.kind == "bridge":
            from kvmgr.services.networks import check_host_bridge

            check_host_bridge(conn, nic.source)
    for disk in spec.disks:
        if disk.path and not _path_known(conn, disk.path):
            raise NotFound(
                f"disk {disk.path!r} does not exist", hint="give an existing file or volume path"
            )


def check_request(conn: Connection, spec: VMSpec) -> None:
    """Refuse now what :func:`create_vm` would refuse: a name in use, a missing network, pool
    or disk, an ISO QEMU cannot read.  The API calls it before it answers 202 for the task."""
    _validate_request(conn, spec)
    for disk in spec.disks:
        if disk.path is None and disk.pool != DEFAULT_POOL:  # the default pool is made on demand
            _require_pool(conn, disk.pool)
    if spec.iso:
        _check_qemu_can_read(conn, _resolve_iso(conn, spec.iso))


def requirements(conn: Connection, spec: VMSpec) -> tuple[int, int]:
    """Memory (bytes) and vCPUs the VM will ask of this host, after :func:`check_request`'s
    refusals; placement (``vm create --host auto``) asks each candidate host."""
    check_request(conn, spec)
    profile = _choose_profile(spec.os, _resolve_iso(conn, spec.iso) if spec.iso else None)
    memory = profile.recommended_memory if spec.memory is None else spec.memory
    return memory, profile.recommended_vcpus if spec.vcpus is None else spec.vcpus


def _require_pool(conn: Connection, name: str) -> None:
    try:
        conn.virconn.storagePoolLookupByName(name)
    except libvirt.libvirtError as err:
        raise NotFound(
            f"storage pool {name!r} does not exist", hint="'kvmgr pool list' shows the pools"
        ) from err


def _require_network(conn: Connection, name: str) -> None:
    try:
        net = conn.virconn.networkLookupByName(name)
    except libvirt.libvirtError as err:
        raise NotFound(
            f"network {name!r} does not exist", hint="'kvmgr net list' shows the networks"
        ) from err
    if not net.isActive():
        raise InvalidInput(
            f"network {name!r} is not running", hint=f"start it with 'kvmgr net start {name}'"
        )


def _path_known(conn: Connection, path: str) -> bool:
    from kvmgr.services.storage import find_volume_by_path

    return find_volume_by_path(conn, path) is not None or os.path.exists(path)


def _check_qemu_can_read(conn: Connection, iso_path: str) -> None:
    """Refuse before anything is made when QEMU could not open the ISO (a file in /root...)."""
    from kvmgr.connect.uri import is_local
    from kvmgr.host.qemu_access import why_qemu_cannot_read

    if conn.is_test_driver or not is_local(conn.uri):
        return
    reason = why_qemu_cannot_read(iso_path)
    if reason is not None:
        raise InvalidInput(
            f"the VM could not read the ISO {iso_path}: {reason}",
            hint="add --import to copy it into the ISO library first (or 'kvmgr iso import "
            f"{iso_path}'), or move it to a directory QEMU can enter",
        )


def _resolve_iso(conn: Connection, ref: str) -> str:
    """An imported ISO's name or a host path to an .iso file -> the path the VM uses."""
    try:
        from kvmgr.services.isos import resolve_iso
    except ImportError:  # the ISO library is optional for this step: accept existing paths
        if os.path.isfile(ref):
            return os.path.abspath(ref)
        raise NotFound(
            f"ISO {ref!r} does not exist", hint="give the path of an .iso file"
        ) from None
    return resolve_iso(conn, ref)


def _choose_profile(os_id: str, iso_path: str | None) -> OSProfile:
    from kvmgr.osinfo import detect_iso, generic_profile, get_profile

    if os_id != "auto":
        return get_profile(os_id)
    if iso_path and os.path.exists(iso_path):
        return detect_iso(iso_path).profile
    return generic_profile()


def _check_resources(
    conn: Connection, memory: int, max_memory: int | None, vcpus: int, max_vcpus: int | None
) -> None:
    from kvmgr.host.memory import node_memory

    with libvirt_errors("reading the host's resources"):
        _model, _node_mib, host_cpus, *_rest = conn.virconn.getInfo()
    host_memory = node_memory(conn).total  # all NUMA nodes: getInfo may report one
    for what, value in (("memory", memory), ("--max-memory", max_memory or memory)):
        if value < _MIN_MEMORY:
            raise InvalidInput(
                f"{what} {format_size(value)} is too small", hint="give at least 64M"
            )
        if value > host_memory:
            raise InvalidInput(
                f"{what} {format_size(value)} is more than this host has "
                f"({format_size(host_memory)})",
                hint="give less memory",
            )
    if max_memory is not None and max_memory < memory:
        raise InvalidInput("--max-memory must not be below --memory")
    if vcpus < 1:
        raise InvalidInput("--vcpus must be at least 1")
    if max_vcpus is not None and max_vcpus < vcpus:
        raise InvalidInput("--max-vcpus must not be below --vcpus")
    ceiling = max_vcpus or vcpus
    if ceiling > max(host_cpus, 1) * 8:
        raise InvalidInput(f"{ceiling} vCPUs is far more than this host's {host_cpus} CPUs")


def _sized(request: DiskRequest, recommended: int) -> DiskRequest:
    if request.path is None and request.size is None:
        return DiskRequest(size=recommended, pool=request.pool, format=request.format)
    return request


def _create_volumes(
    conn: Connection, name: str, disks: list[DiskRequest], journal: Steps
) -> list[VolumeRef]:
    volumes = []
    for index, request in enumerate(disks):
        if request.path is not None or request.size is None:
            continue
        suffix = "" if index == 0 else f"-{index}"
        extension = ".qcow2" if request.format == "qcow2" else ".img"
        vol_name = f"{name}{suffix}{extension}"
        journal.uses("volume", request.pool, vol_name)  # a vol delete of it waits for the define
        # A taken name is refused before the undo record, which would otherwise delete it.
        refuse_taken_name(conn, request.pool, vol_name)
        journal.undo_with("volume.delete", pool=request.pool, name=vol_name)
        journal.progress(
            f"creating {format_size(request.size)} {request.format} disk {vol_name}"
            f" in pool {request.pool}"
        )
        volumes.append(create_volume(conn, request.pool, vol_name, request.size, request.format))
    return volumes


# ------------------------------------------------------------ start and wait
def _start_and_wait(
    conn: Connection, dom: libvirt.virDomain, spec: VMSpec, journal: Steps, result: CreateResult
) -> None:
    from kvmgr.services.readiness import NotReady, start_and_wait

    kept = []

    def started() -> None:
        # From here every step of kvmgr's is done: what is left is the guest's own boot, and a
        # guest slower than the wait is not a failed create.
        journal.finish_with("domain.keep", uuid=dom.UUIDString())
        kept.append(True)

    try:
        seen = start_and_wait(
            conn, dom, spec.wait, spec.wait_timeout, started=started, progress=journal.progress
        )
    except KvmgrError as err:
        if kept:
            how = "kept running" if isinstance(err, NotReady) else "kept"
            err.message = f"VM {spec.name!r} was created and is {how}, but {err.message}"
            err.hint = f"{err.hint}; 'kvmgr vm delete {spec.name} --force' removes it"
        raise
    if seen is not None:
        result.ip = seen.ip
        result.ready = str(seen)
        journal.progress(f"{spec.name}: {seen}")


__all__ = [
    "GIB",
    "HOTPLUG_PORTS",
    "CreateResult",
    "DiskRequest",
    "NicRequest",
    "VMSpec",
    "build_domain",
    "create_vm",
    "parse_disk_option",
    "parse_network_option",
    "root_ports_needed",
]
