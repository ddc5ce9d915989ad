"""``vm create --unattended``: install an OS from its ISO with no one at the console.

1. The install script is made (osinfo-db's template, or the user's file) and checked
   (:mod:`kvmgr.services.unattended`) before anything exists.
2. The installer's kernel and initrd are read from the ISO; the script is appended to the initrd
   as a second cpio archive (or, for Ubuntu's subiquity, put on a ``cidata`` seed); both travel
   to the host as volumes through the libvirt stream.
3. The VM is defined to boot that kernel with the script's arguments and ``on_reboot=destroy``,
   so the installer's final reboot stops it instead of booting the installer again.
4. kvmgr follows the serial console until the VM stops, then switches it to boot from its disk,
   removes the installer kernel, initrd and media, and starts it.

Each step that makes something records its undo in the operation's :class:`Steps` first.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, KvmgrError, OperationFailed, libvirt_errors
from kvmgr.images.initramfs import gzipped_cpio, regular
from kvmgr.services import vms
from kvmgr.services.create import CreateResult, VMSpec, create_vm
from kvmgr.services.install_media import identify_iso, read_install_media, upload_bytes
from kvmgr.services.readiness import Readiness
from kvmgr.services.steps import LocalSteps, Steps
from kvmgr.services.storage import delete_volume_by_path
from kvmgr.services.storage_pools import DEFAULT_POOL
from kvmgr.services.unattended import InstallPlan, UnattendedRequest, load, plan
from kvmgr.xml.domain import Domain

INSTALL_WAITS = ("installed", "ready", "started")  # started: Windows only (windows_install)
#: Console lines that mean the installer gave up, even though the VM then stopped.
_FAILURE_RE = re.compile(
    rb"KVMGR-INSTALL-FAILED.*|An unknown error has occurred.*|Kernel panic.*|"
    rb"The following error occurred.*|kickstart file .* is missing.*"
)
_TAIL_LINES = 15
# Progress goes to spinners, task rows and logs: password hashes the installer echoes stay out.
_HASH_RE = re.compile(r"\$[156y]\$[^\s\"']+")


@dataclass
class InstallResult:
    vm: CreateResult
    script_kind: str
    script_source: str
    script_sha256: str
    install_seconds: float
    kernel_cmdline: str

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.vm.__dict__)
        data.update(
            script=self.script_kind,
            script_source=self.script_source,
            script_sha256=self.script_sha256,
            install_seconds=round(self.install_seconds, 1),
            kernel_cmdline=self.kernel_cmdline,
        )
        return data


def _tail(transcript: bytes) -> str:
    lines = transcript.decode(errors="replace").replace("\r", "").splitlines()
    return "\n".join(_HASH_RE.sub("$6$...", line) for line in lines[-_TAIL_LINES:])


def create_unattended(
    conn: Connection,
    spec: VMSpec,
    request: UnattendedRequest,
    *,
    wait: str = "installed",
    steps: Steps | None = None,
    progress: Any = None,
) -> InstallResult:
    """Create ``spec`` and install its OS unattended; the VM then runs from its disk."""
    if not spec.iso:
        raise InvalidInput("--unattended needs --iso", hint="give the installation ISO")
    if wait not in INSTALL_WAITS:
        raise InvalidInput(f"--wait {wait!r} is not known here", hint="use installed or ready")
    if not spec.start:
        raise InvalidInput("--unattended needs the VM to start", hint="drop --no-start")
    say = progress or (lambda _message: None)
    own = steps is None
    journal: Steps = steps if steps is not None else LocalSteps(say)
    try:
        return _create(conn, spec, request, wait, journal, say)
    except BaseException as err:
        if own and isinstance(journal, LocalSteps):
            problems = journal.recover(conn)
            if problems and isinstance(err, KvmgrError):
                err.message += "; cleaning up also failed: " + "; ".join(problems)
        raise


def _create(
    conn: Connection, spec: VMSpec, request: UnattendedRequest, wait: str, steps: Steps, say: Any
) -> InstallResult:
    import hashlib

    from kvmgr.services.create import _resolve_iso  # the ISO library's names and paths

    settings = load(request, spec.name)  # every file read and checked before anything is made
    iso_path = _resolve_iso(conn, spec.iso or "")
    say("reading the installer from the ISO")
    descriptor, os_entry, found = identify_iso(conn, iso_path, spec.os)
    if os_entry.family == "winnt":  # no kernel to read: Setup boots from the ISO itself
        from kvmgr.services.windows_install import create_windows, shared_media_note

        if spec.os == "auto" and (note := shared_media_note(descriptor, os_entry)):
            say(note)

        return create_windows(
            conn, spec, settings, iso_path, os_entry, found, wait=wait, steps=steps, say=say
        )
    if wait == "started":
        raise InvalidInput("--wait started is for Windows installs", hint="use installed or ready")
    media = read_install_media(conn, iso_path, spec.os)
    install = plan(media.os_entry, media.media, settings, volume_id=media.descriptor.volume_id)
    say(f"{install.kind} from {install.source}")
    if vms.exists(conn, spec.name):
        raise InvalidInput(f"a VM named {spec.name!r} already exists", hint="choose another name")
    pool = spec.disks[0].pool if spec.disks else DEFAULT_POOL
    boot = _upload_boot_files(conn, spec.name, pool, media.kernel, media.initrd, install, steps)
    ceiling: dict[str, int] = {}
    install_spec = replace(
        spec,
        os=media.os_entry.short_id,
        start=False,
        wait="none",
        customize=[
            *spec.customize,
            lambda domain: _installer_boot(domain, boot, install),
            lambda domain: _without_room(domain, ceiling),
        ],
    )
    # One journal: create_vm's records (volume.delete, domain.undefine) undo the VM with ours.
    result = create_vm(conn, install_spec, progress=say, steps=steps)
    began = time.monotonic()
    _run_installer(conn, spec, say)
    install_seconds = time.monotonic() - began
    say("installer finished: switching the VM to boot from its disk")
    _switch_to_disk(conn, spec.name, iso_path, boot, ceiling)
    result.max_memory = ceiling.get("memory", result.max_memory)
    for path in boot.values():
        delete_volume_by_path(conn, path)
    result.volumes = [v for v in result.volumes if v not in boot.values()]
    seen = start_installed(conn, spec, wait, steps, say)
    if seen is not None:
        result.ready, result.ip = str(seen), seen.ip
    result.state = vms.STATE_NAMES[vms.state_of(vms.lookup(conn, spec.name))]
    return InstallResult(
        vm=result,
        script_kind=install.kind,
        script_source=install.source,
        script_sha256=hashlib.sha256(install.text.encode()).hexdigest(),
        install_seconds=install_seconds,
        kernel_cmdline=install.cmdline,
    )


def _upload_boot_files(
    conn: Connection,
    name: str,
    pool: str,
    kernel: bytes,
    initrd: bytes,
    install: InstallPlan,
    steps: Steps,
) -> dict[str, str]:
    boot: dict[str, str] = {}
    steps.progress("uploading the installer kernel and initrd")
    boot["kernel"] = upload_bytes(conn, pool, f"{name}-install-vmlinuz", kernel, steps)
    if install.injection == "initrd":
        # The kernel unpacks every archive of the initrd in turn: ours adds the script at /.
        script = gzipped_cpio([regular(install.filename, install.text.encode())])
        initrd = initrd + script
    boot["initrd"] = upload_bytes(conn, pool, f"{name}-install-initrd.img", initrd, steps)
    if install.injection == "cidata":
        from kvmgr.services.cloudinit import meta_data, seed_iso

        seed = seed_iso(
            {"meta-data": meta_data(f"{name}-install", name), "user-data": install.text}
        )
        boot["seed"] = upload_bytes(conn, pool, f"{name}-install-seed.iso", seed, steps)
    return boot


def _without_room(domain: Domain, ceiling: dict[str, int]) -> None:
    """The installer boots without the balloon's room to grow: a guest booted with its memory
    ceiling inflates the balloon over the excess, which under TCG cost the Rocky-like installer
    ~2 s of its 11-13 s of CPU to "kickstart found" (3 GiB VM, 6 GiB ceiling; docs/BENCHMARKS.md).
    The ceiling comes back when the VM is switched to its disk, so the installed VM has the same
    room as any other (:func:`_switch_to_disk`)."""
    if domain.memory_bytes and domain.current_memory_bytes:
        ceiling["memory"] = domain.memory_bytes
        domain.memory_bytes = domain.current_memory_bytes


def _installer_boot(domain: Domain, boot: dict[str, str], install: InstallPlan) -> None:
    domain.os.kernel = boot["kernel"]
    domain.os.initrd = boot["initrd"]
    domain.os.cmdline = install.cmdline
    # The installer's closing reboot must stop the VM, not start the installer again.
    domain.on_reboot = "destroy"
    meta = domain.kvmgr_metadata(create=True)
    assert meta is not None
    meta.owned_volumes = [*meta.owned_volumes, *boot.values()]
    if "seed" in boot:
        from kvmgr.services.cloud_vms import seed_cdrom

        domain.devices.disks.append(seed_cdrom(domain, boot["seed"]))


def _run_installer(conn: Connection, spec: VMSpec, say: Any) -> None:
    from kvmgr.services.console import ConsoleSession

    dom = vms.lookup(conn, spec.name)
    with libvirt_errors(f"starting the installer of VM {spec.name}"):
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    session = ConsoleSession(conn, spec.name)  # attached before the first instruction runs
    transcript = b""
    deadline = time.monotonic() + spec.wait_timeout
    try:
        with libvirt_errors(f"resuming VM {spec.name}"):
            dom.resume()
        say(f"installing {spec.name} (serial console follows)")
        pending = b""
        while dom.isActive():
            if time.monotonic() > deadline:
                raise OperationFailed(
                    f"the installer of VM {spec.name} did not finish within "
                    f"{spec.wait_timeout:g} s; its last lines:\n{_tail(transcript)}",
                    hint="watch it with 'kvmgr vm console NAME', or raise --wait-timeout",
                )
            try:
                data = session.read(0.5)
            except KvmgrError:
                break  # the console closed: the VM stopped
            transcript = (transcript + data)[-64 * 1024 :]
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = _HASH_RE.sub("$6$...", line.decode(errors="replace").strip())
                if text:
                    say(f"installer: {text[:160]}")
    finally:
        session.close()
    _wait_stopped(dom, spec.name)
    _state, reason = dom.state()
    failed = _FAILURE_RE.search(transcript)
    if failed or reason in (libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, libvirt.VIR_DOMAIN_SHUTOFF_FAILED):
        what = failed.group(0).decode(errors="replace") if failed else "the VM crashed"
        raise OperationFailed(
            f"the install of VM {spec.name} failed: {what}; the installer's last lines:\n"
            f"{_tail(transcript)}",
            hint="fix the install settings or the script and create the VM again",
        )


def _wait_stopped(dom: libvirt.virDomain, name: str) -> None:
    deadline = time.monotonic() + 30
    while dom.isActive():
        if time.monotonic() > deadline:
            raise OperationFailed(f"VM {name} did not stop after its installer finished")
        time.sleep(0.2)


def _switch_to_disk(
    conn: Connection, name: str, iso_path: str, boot: dict[str, str], ceiling: dict[str, int]
) -> None:
    """The definition without the installer kernel, initrd and media, with its memory ceiling
    back; reboots restart it."""
    dom = vms.lookup(conn, name)
    with libvirt_errors(f"reading the definition of VM {name}"):
        domain = Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    if "memory" in ceiling:
        domain.memory_bytes = ceiling["memory"]
    domain.os.kernel = None
    domain.os.initrd = None
    domain.os.cmdline = None
    domain.on_reboot = "restart"
    media_paths = {iso_path, *boot.values()}
    for disk in list(domain.devices.disks):
        if disk.device == "cdrom" and disk.source_file in media_paths:
            domain.devices.disks.remove(disk)
    meta = domain.kvmgr_metadata()
    if meta is not None:
        meta.owned_volumes = [p for p in meta.owned_volumes if p not in boot.values()]
    with libvirt_errors(f"switching VM {name} to boot from its disk"):
        conn.virconn.defineXML(domain.to_xml())


def start_installed(
    conn: Connection, spec: VMSpec, wait: str, steps: Steps, say: Any
) -> Readiness | None:
    """Start the installed VM; with ``wait`` ready, wait for it.  What the wait saw, or None."""
    from kvmgr.services.readiness import NotReady, start_and_wait

    dom = vms.lookup(conn, spec.name)
    say(f"starting {spec.name} from its disk")

    def started() -> None:  # installed and running: a slow first boot is no reason to undo it
        steps.finish_with("domain.keep", uuid=dom.UUIDString())

    try:
        seen = start_and_wait(
            conn, dom, "ready" if wait == "ready" else "none", spec.wait_timeout,
            started=started, progress=say,
        )  # fmt: skip
    except NotReady as err:
        err.message = f"VM {spec.name!r} was installed and is kept running, but {err.message}"
        raise
    if seen is not None:
        say(f"{spec.name}: {seen}")
    return seen
