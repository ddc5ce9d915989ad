"""What a failed live change means: a QEMU that crashed, a vCPU the guest did not give back.

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

import libvirt

from kvmgr.errors import OperationFailed, translate
from kvmgr.services import vms


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
