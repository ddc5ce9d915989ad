"""``vm create --unattended`` for Windows: the install ISO boots, the answer file is on a 2nd CD.

1. ``autounattend.xml`` is rendered from osinfo-db's template and checked
   (:mod:`kvmgr.services.windows_unattend`) before anything exists.
2. It goes on a small ISO made in-process, uploaded as a volume through the libvirt stream (so a
   remote host needs no shared path) and attached as a read-only SATA CD-ROM; the VM owns the
   volume, so ``vm delete`` removes it.
3. The VM is defined by the usual policy (Windows 11 also gets UEFI Secure Boot and a TPM 2.0,
   refused up front on a host without swtpm: ``create_policy``).  Windows has no virtio
   drivers on its media, so osinfo-db lists no virtio devices for it and the disk is SATA
   (q35's AHCI) and the NIC an e1000e, both drivers Windows Setup ships.  No direct kernel
   boot: the disk comes first in the boot order and the install ISO second, so the blank disk
   falls through to the ISO and, after Setup's first reboot, the disk boots and Setup carries
   on from it.
4. ``on_reboot`` stays ``restart``: Setup reboots two or three times (osinfo-db's
   ``installer-reboots``) and must come back each time.  The install ends when Windows powers
   the VM off (the template's last first-logon command, ``shutdown /s``).  kvmgr waits for that
   power-off, then removes both CD-ROMs and the answer-file volume and starts the VM from its
   disk.  With ``wait="started"`` kvmgr returns once Setup runs and leaves the media attached
   (inert: the disk boots first) until ``vm delete`` or :func:`finish_install`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, OperationFailed, Unsupported, libvirt_errors
from kvmgr.osinfo import get_profile
from kvmgr.osinfo.db import Media, OsEntry, get_db
from kvmgr.osinfo.iso import IsoDescriptor
from kvmgr.services import vms
from kvmgr.services.create import VMSpec, create_vm
from kvmgr.services.create_policy import check_host_support
from kvmgr.services.install_media import upload_bytes
from kvmgr.services.steps import Steps
from kvmgr.services.storage import delete_volume_by_path
from kvmgr.services.storage_pools import DEFAULT_POOL
from kvmgr.services.unattended import Settings
from kvmgr.services.windows_unattend import (
    WindowsSettings,
    computer_name,
    plan_windows,
    unattend_iso,
    windows_language,
    windows_timezone,
)
from kvmgr.xml.domain import Domain

if TYPE_CHECKING:
    from kvmgr.services.installs import InstallResult

#: How often the install-phase wait looks at the VM: Setup takes many minutes, a few seconds
#: late is nothing, and each look is one libvirt call.
_POLL = 2.0


def windows_settings(settings: Settings) -> WindowsSettings:
    """The generic install options, checked against what Windows accepts."""
    if not settings.user:
        raise InvalidInput(
            "a Windows install needs --user",
            hint="Setup logs that user on once, which runs the command that ends the install",
        )
    if settings.user_hash and not settings.user_windows:
        raise Unsupported(
            "Windows needs the password itself, and this request holds only its hash",
            hint="give it with the CLI's --password-file, or leave it out and set it later",
        )
    if settings.root_hash and not settings.admin_windows:
        raise Unsupported(
            "Windows needs the Administrator password itself, not its hash",
            hint="give it with --root-password-file, or leave it out",
        )
    return WindowsSettings(
        computer_name=computer_name(settings.hostname),
        timezone=windows_timezone(settings.timezone),
        language=windows_language(settings.locale),
        user=settings.user,
        admin_obscured=settings.admin_windows,
        user_obscured=settings.user_windows,
        product_key=settings.product_key,
        profile=settings.profile,
    )


def shared_media_note(descriptor: IsoDescriptor, detected: OsEntry) -> str | None:
    """What to say when other Windows releases' media share this ISO's id.

    Windows 10 and 11 ISOs carry one volume-id pattern (``CCCOMA_X64FRE_...``), which kvmgr
    gives to 10, the release that introduced it.  Windows 11 on Windows 10's machine (BIOS, no
    TPM) fails at Setup's hardware check, so the user is told how to say which it is.
    """
    others = [
        match.os.short_id
        for match in get_db().match_media(descriptor)
        if match.os.family == "winnt" and match.os.id != detected.id
    ]
    if not others:
        return None
    return (
        f"the ISO's volume id {descriptor.volume_id!r} is also that of {', '.join(others)}: "
        f"installing as {detected.short_id}; for {others[0]} media give --os {others[0]}"
    )


def create_windows(
    conn: Connection,
    spec: VMSpec,
    settings: Settings,
    iso_path: str,
    os_entry: OsEntry,
    media: Media | None,
    *,
    wait: str,
    steps: Steps,
    say: Any,
) -> InstallResult:
    from kvmgr.services.installs import InstallResult, start_installed

    if settings.script_text is not None:
        raise Unsupported(
            "--script is for kickstart/preseed files", hint="Windows takes osinfo-db's template"
        )
    if settings.packages or settings.ssh_keys:
        raise InvalidInput("--packages and --ssh-key have no meaning for a Windows install")
    plan = plan_windows(os_entry, media, windows_settings(settings))
    say(f"autounattend.xml from {plan.source}")
    if vms.exists(conn, spec.name):
        raise InvalidInput(f"a VM named {spec.name!r} already exists", hint="choose another name")
    # Windows 11's TPM and Secure Boot are checked here too: the answer-file volume is made
    # before create_vm, whose own check would come after it.
    check_host_support(conn, spec, get_profile(os_entry.short_id), conn.domain_type().domain_type)
    pool = spec.disks[0].pool if spec.disks else DEFAULT_POOL
    steps.progress("uploading the autounattend CD")
    unattend = upload_bytes(
        conn, pool, f"{spec.name}-unattend.iso", unattend_iso(plan.files), steps
    )
    install_spec = replace(
        spec,
        os=os_entry.short_id,
        start=False,
        wait="none",
        customize=[*spec.customize, lambda domain: _attach(domain, unattend)],
    )
    result = create_vm(conn, install_spec, progress=say, steps=steps)
    dom = vms.lookup(conn, spec.name)
    began = time.monotonic()
    with libvirt_errors(f"starting Windows Setup in VM {spec.name}"):
        dom.create()
    sha256 = hashlib.sha256(plan.text.encode()).hexdigest()
    if wait == "started":
        steps.finish_with("domain.keep", uuid=dom.UUIDString())
        say(f"Windows Setup is running in {spec.name}; the install media stay until vm delete")
        result.state = vms.STATE_NAMES[vms.state_of(dom)]
        return InstallResult(result, "unattend", plan.source, sha256, 0.0, "")
    _wait_powered_off(dom, spec, say)
    install_seconds = time.monotonic() - began
    say("Windows Setup finished: switching the VM to boot from its disk")
    finish_install(conn, spec.name, iso_path, unattend)
    result.volumes = [v for v in result.volumes if v != unattend]
    seen = start_installed(conn, spec, wait, steps, say)
    if seen is not None:
        result.ready, result.ip = str(seen), seen.ip
    result.state = vms.STATE_NAMES[vms.state_of(vms.lookup(conn, spec.name))]
    return InstallResult(result, "unattend", plan.source, sha256, install_seconds, "")


def _attach(domain: Domain, path: str) -> None:
    from kvmgr.services.cloud_vms import seed_cdrom

    # No boot order: the answer file is read by Setup from the booted ISO, never booted itself.
    domain.devices.disks.append(seed_cdrom(domain, path))
    meta = domain.kvmgr_metadata(create=True)
    assert meta is not None
    meta.owned_volumes = [*meta.owned_volumes, path]


def _wait_powered_off(dom: libvirt.virDomain, spec: VMSpec, say: Any) -> None:
    say(f"Windows Setup is running in {spec.name} (it reboots several times; kvmgr waits for "
        "its closing power-off)")  # fmt: skip
    deadline = time.monotonic() + spec.wait_timeout
    while True:
        with libvirt_errors(f"watching VM {spec.name}"):
            state, reason = dom.state()
        if state == libvirt.VIR_DOMAIN_SHUTOFF:
            break
        if time.monotonic() > deadline:
            raise OperationFailed(
                f"Windows Setup in VM {spec.name} did not finish within {spec.wait_timeout:g} s",
                hint="watch it with 'kvmgr vm vnc NAME'; Windows needs --wait-timeout 3600 or more",
            )
        time.sleep(_POLL)
    if reason in (libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, libvirt.VIR_DOMAIN_SHUTOFF_FAILED):
        raise OperationFailed(f"VM {spec.name} crashed during Windows Setup")


def finish_install(conn: Connection, name: str, iso_path: str, unattend: str) -> None:
    """The stopped VM without its install ISO and answer-file CD; the volume deleted."""
    dom = vms.lookup(conn, name)
    with libvirt_errors(f"reading the definition of VM {name}"):
        domain = Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    for disk in list(domain.devices.disks):
        if disk.device == "cdrom" and disk.source_file in (iso_path, unattend):
            domain.devices.disks.remove(disk)
    meta = domain.kvmgr_metadata()
    if meta is not None:
        meta.owned_volumes = [p for p in meta.owned_volumes if p != unattend]
    with libvirt_errors(f"switching VM {name} to boot from its disk"):
        conn.virconn.defineXML(domain.to_xml())
    delete_volume_by_path(conn, unattend)
