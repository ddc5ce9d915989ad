"""Why a live change is refused or failed: above a ceiling, a vCPU the guest did not give back,
a QEMU that crashed.  Each says in one line what happened and what to do.

When QEMU dies under a hot-plug (or any call into a running VM), libvirt answers with its words
for a closed monitor ("End of file from qemu monitor", "domain is not running"), which say
nothing a person can act on.  :func:`qemu_errors` asks libvirt for the VM's state and reason
(``VIR_DOMAIN_SHUTOFF_CRASHED``, ``VIR_DOMAIN_CRASHED``) and says "QEMU crashed during <op>"
with what to do; ``vm list`` and ``vm info`` show the same reason (``vms.state_reason``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import libvirt

from kvmgr.errors import InvalidInput, OperationFailed, libvirt_errors, translate
from kvmgr.services import vms
from kvmgr.units import MIB, format_size

if TYPE_CHECKING:
    from kvmgr.xml.domain import Domain

MIN_MEMORY = 64 * MIB


# ------------------------------------------------------------------------- ceilings
def check_vcpus(name: str, vcpus: int, ceiling: int, *, explicit_max: bool) -> None:
    if vcpus < 1:
        raise InvalidInput("--vcpus must be at least 1")
    if vcpus > ceiling:
        raise InvalidInput(
            f"{vcpus} vCPUs is above the maximum of {ceiling} for VM {name!r}",
            hint="give --max-vcpus as well (only with --config, i.e. for the next boot)"
            if explicit_max
            else f"raising the maximum needs a restart: 'kvmgr vm set {name} --config "
            f"--max-vcpus {vcpus} --vcpus {vcpus}', then restart the VM ('kvmgr vm shutdown "
            f"{name}', 'kvmgr vm start {name}'); 'vm create --max-vcpus' sets it at creation",
        )


def check_memory(name: str, memory: int, ceiling: int, *, explicit_max: bool) -> None:
    if memory < MIN_MEMORY:
        raise InvalidInput(f"memory {format_size(memory)} is too small", hint="give at least 64M")
    if memory > ceiling:
        raise InvalidInput(
            f"memory {format_size(memory)} is above the ceiling of {format_size(ceiling)} "
            f"for VM {name!r}",
            hint="give a --max-memory at least as large"
            if explicit_max
            else f"raising the ceiling needs a restart: 'kvmgr vm set {name} --config "
            f"--max-memory {_size_option(memory)} --memory {_size_option(memory)}', then restart "
            f"the VM ('kvmgr vm shutdown {name}', 'kvmgr vm start {name}'); 'vm create "
            "--max-memory' sets it at creation",
        )


def _size_option(size: int) -> str:
    """A size as the command line takes it: whole MiB ("1536M")."""
    return f"{-(-size // MIB)}M"


def check_live_ceilings(dom: libvirt.virDomain, vcpus: int | None, memory: int | None) -> None:
    """The running guest keeps the maximums it booted with, even if the definition has more."""
    with libvirt_errors(f"reading the maximums of VM {dom.name()}"):
        live_max_vcpus = int(
            dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
        )
        live_max_memory = int(dom.maxMemory()) * 1024
    later = (
        "the definition's higher maximum applies from the next boot: restart the VM "
        f"('kvmgr vm shutdown {dom.name()}', 'kvmgr vm start {dom.name()}'), or use --config"
    )
    if vcpus is not None and vcpus > live_max_vcpus:
        raise InvalidInput(
            f"{vcpus} vCPUs is above the running guest's maximum of {live_max_vcpus}", hint=later
        )
    if memory is not None and memory > live_max_memory:
        raise InvalidInput(
            f"memory {format_size(memory)} is above the running guest's ceiling of "
            f"{format_size(live_max_memory)}",
            hint=later,
        )


def check_ceilings_cover_current(
    name: str,
    defined: Domain,
    max_vcpus: int | None,
    max_memory: int | None,
    vcpus: int | None,
    memory: int | None,
) -> None:
    """A lower maximum must not leave the defined current value above it."""
    if max_vcpus is not None:
        current = vcpus or defined.vcpus_current or defined.vcpus or 1
        if current > max_vcpus:
            raise InvalidInput(
                f"--max-vcpus {max_vcpus} is below the VM's {current} vCPUs",
                hint=f"lower them too: 'kvmgr vm set {name} --vcpus {max_vcpus} "
                f"--max-vcpus {max_vcpus}'",
            )
    if max_memory is not None:
        if max_memory < MIN_MEMORY:
            raise InvalidInput(
                f"--max-memory {format_size(max_memory)} is too small", hint="give at least 64M"
            )
        current_memory = memory or defined.current_memory_bytes or 0
        if current_memory > max_memory:
            raise InvalidInput(
                f"--max-memory {format_size(max_memory)} is below the VM's memory of "
                f"{format_size(current_memory)}",
                hint="give a --memory no larger than the new maximum as well",
            )


# ------------------------------------------------------------------------- crashed QEMU
def _crashed(dom: libvirt.virDomain, wait: float) -> str | None:
    """The state phrase of a VM whose QEMU has died ("shut off (crashed)"), else None.

    libvirt answers the failed call before it has processed the monitor's end of file, so a
    VM that still looks active is asked again for up to ``wait`` seconds.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            state, reason = dom.state()
        except libvirt.libvirtError:
            return None  # gone (transient) or no daemon: the original error says more
        if state == libvirt.VIR_DOMAIN_CRASHED or (
            state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED
        ):
            return vms.describe_state(vms.STATE_NAMES[state], vms.state_reason(state, reason))
        if not vms.is_active_state(state) or time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


#: What libvirt says when QEMU went away under a call into it (its monitor closed).
_QEMU_GONE_TEXT = (
    "end of file from qemu monitor",
    "qemu unexpectedly closed the monitor",
    "unable to read from monitor",
    "domain is not running",
    "monitor connection",
    "no longer running",
)


@contextmanager
def qemu_errors(dom: libvirt.virDomain, doing: str) -> Iterator[None]:
    """``libvirt_errors`` for a call into a running VM's QEMU that says so when QEMU died in it.

    A hot-plug whose QEMU crashed fails with libvirt's words for a closed monitor; the user is
    told "QEMU crashed during <doing>", the state the VM is left in and what to do.
    """
    try:
        yield
    except libvirt.libvirtError as err:
        crashed = crashed_state(dom, err)
        if crashed is None:
            raise translate(err, doing) from err
        raise crash_error(dom.name(), doing, err, crashed) from err


def crashed_state(dom: libvirt.virDomain, err: libvirt.libvirtError) -> str | None:
    """After ``err`` from a call into ``dom``: its state phrase if its QEMU died, else None."""
    detail = (err.get_error_message() or str(err)).lower()
    gone = any(text in detail for text in _QEMU_GONE_TEXT)
    return _crashed(dom, wait=5.0 if gone else 0.0)


def crash_error(name: str, doing: str, err: libvirt.libvirtError, crashed: str) -> OperationFailed:
    detail = (err.get_error_message() or str(err)).strip()
    return OperationFailed(
        f"QEMU crashed during {doing}: {detail}; VM {name} is {crashed}",
        hint=f"libvirt's log of it is /var/log/libvirt/qemu/{name}.log on the host; "
        f"start the VM again with 'kvmgr vm start {name}'",
    )


# ------------------------------------------------------------------------- vCPU unplug
def set_live_vcpus(dom: libvirt.virDomain, value: int, live_vcpus: int) -> None:
    """Hot-plug or unplug vCPUs; an unplug the guest refused or left unanswered says so.

    libvirt asks the guest (ACPI eject) to give back each vCPU and waits 5 s for it; its own
    words ("vcpu unplug request timed out. Unplug result must be manually inspected in the
    domain", a Busy "try again" once translated) do not tell a person what to do.  A QEMU that
    died meanwhile is left to :func:`qemu_errors` around the call, which reports the crash.
    """
    try:
        dom.setVcpusFlags(value, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    except libvirt.libvirtError as err:
        if value >= live_vcpus or crashed_state(dom, err) is not None:
            raise
        raise unplug_failed(dom.name(), live_vcpus, value, err) from err


def unplug_failed(
    name: str, live_vcpus: int, value: int, err: libvirt.libvirtError
) -> OperationFailed:
    """One line for a vCPU unplug that failed, and what to do about it.

    Measured under TCG (demo guest, loaded 2-core host): the guest often releases the vCPU a
    little after libvirt's 5 s, and libvirt 9.0 then still counts it (QEMU has one vCPU
    fewer) until the VM restarts, so the sure way is the next boot.
    """
    detail = (err.get_error_message() or str(err)).strip()
    if err.get_error_code() == libvirt.VIR_ERR_OPERATION_TIMEOUT or "timed out" in detail:
        why = "the guest did not release it within libvirt's 5 s"
    elif "reject" in detail or "refuse" in detail:
        why = "the guest refused to release it"
    elif "not supported device type" in detail:
        # QEMU's ACPI CPU hot-unplug works once the guest's firmware and OS switched it on
        why = "the guest has not enabled CPU hot-unplug (it is still booting, or its OS lacks it)"
    elif "hotpluggable" in detail:
        # libvirt starts the vCPUs a VM boots with as part of the machine: only vCPUs that
        # were hot-plugged since can leave while it runs
        why = "only vCPUs hot-plugged since it booted can be unplugged, not those it booted with"
    else:
        why = "libvirt could not unplug it"
    return OperationFailed(
        f"VM {name!r} did not give back a vCPU (asked for {value} of its {live_vcpus}): {why} "
        f"(libvirt: {detail})",
        hint="the guest OS must support CPU hot-unplug (Linux does, through ACPI) and be "
        "running (booted, not paused); a slow guest may release it later, but libvirt then "
        "still counts it "
        f"until the VM restarts. The sure way: 'kvmgr vm set {name} --config --vcpus {value}', "
        f"then restart the VM ('kvmgr vm shutdown {name}', 'kvmgr vm start {name}')",
    )
