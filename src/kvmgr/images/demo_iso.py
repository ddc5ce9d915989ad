"""The demo/test ISO: a tiny bootable BIOS image that gets an address by DHCP and offers a shell.

It is built from what the host already has: its Debian kernel and virtio modules, busybox-static
and isolinux, so it needs no download.  The guest prints markers on its serial console that tests
and demos wait for::

    KVMGR-BOOTED            modules loaded
    KVMGR-IP 192.168.122.57 (or "none" when DHCP got no answer)
    KVMGR-READY             the shell on ttyS0 is about to start (prompt ``kvmgr-demo# ``)

``kvmgr-ready`` inside the guest prints the last two again, for a console that attached late.
After the marker the guest also answers on port 22 with an SSH banner (``SSH-2.0-kvmgr-demo``,
busybox nc) and answers the guest agent's ``guest-sync``/``guest-ping`` on its virtio-serial
port, so ``--wait ready`` can be tested on a VM without a serial console.

The build is reproducible (fixed timestamps and owners) and cached: a stamp file next to the ISO
records the inputs, and an unchanged stamp means the ISO is reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from kvmgr.errors import HostError, InvalidInput
from kvmgr.images import initramfs
from kvmgr.images.initramfs import Entry, char_device, directory, regular, symlink

VOLUME_ID = "KVMGR_DEMO"
#: Bump when the image layout changes in a way the guest scripts' hash does not capture.
BUILDER_VERSION = "1"
#: Drivers the guest loads (dependencies are added in order); missing optional ones are skipped.
WANTED_MODULES = (
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_balloon",
    "virtio_console",
    "virtio_scsi",
    "button",  # ACPI power button, so libvirt's graceful shutdown reaches the guest
    "evdev",  # busybox acpid reads the button through /dev/input/event*
)
REQUIRED_MODULES = ("virtio_pci", "virtio_net", "virtio_blk")
KERNEL_CMDLINE = "console=tty0 console=ttyS0,115200 quiet"
BUSYBOX = Path("/bin/busybox")
ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
# Fixed timestamp for every file in the image (2024-01-01), so builds are byte-identical.
SOURCE_DATE_EPOCH = 1704067200
_GUEST_FILES = (
    "rc.sh", "udhcpc.sh", "kvmgr-ready.sh", "profile.sh", "inittab", "power-button.sh",
    "ssh-banner.sh", "kvmgr-agent.sh",
)  # fmt: skip
_INSTALL_HINT = "run scripts/install-system-deps.sh (or apt-get install {package})"


@dataclass(frozen=True)
class Inputs:
    """Everything the image is made of; the stamp stores it to decide about reuse."""

    kernel_version: str
    kernel_sha256: str
    busybox_version: str
    modules: tuple[str, ...]
    scripts_sha256: str
    builder_version: str = BUILDER_VERSION


@dataclass(frozen=True)
class DemoIso:
    path: Path
    volume_id: str
    inputs: Inputs
    reused: bool


# --------------------------------------------------------------------------- host inputs
def _version_key(version: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"[.-]", version)]


def find_kernel(boot: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")) -> str:
    """The newest kernel version with both /boot/vmlinuz-<v> and /lib/modules/<v>."""
    versions = [
        path.name.removeprefix("vmlinuz-")
        for path in boot.glob("vmlinuz-*")
        if (modules_root / path.name.removeprefix("vmlinuz-")).is_dir()
    ]
    if not versions:
        raise HostError(
            f"no kernel with modules found in {boot} and {modules_root}",
            hint=_INSTALL_HINT.format(package="linux-image-amd64"),
        )
    return max(versions, key=_version_key)


def _run(argv: list[str], doing: str) -> str:
    try:
        done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300)
    except FileNotFoundError as err:
        raise HostError(f"{doing}: {argv[0]} is not installed", hint=_hint_for(argv[0])) from err
    except subprocess.CalledProcessError as err:
        raise HostError(f"{doing} failed: {(err.stderr or err.stdout).strip()}") from err
    return done.stdout


def _hint_for(program: str) -> str:
    package = {"xorriso": "xorriso", "modinfo": "kmod"}.get(program, program)
    return _INSTALL_HINT.format(package=package)


def busybox_version(busybox: Path = BUSYBOX) -> str:
    if not busybox.exists():
        raise HostError(f"{busybox} not found", hint=_INSTALL_HINT.format(package="busybox-static"))
    first_line = _run([str(busybox)], "reading the busybox version").splitlines()[0]
    match = re.search(r"BusyBox (v\S+)", first_line)
    return match[1] if match else first_line.strip()


def module_info(kernel_version: str, module: str) -> tuple[Path, list[str]] | None:
    """The module's file and its direct dependencies, or None when the kernel lacks it."""
    try:
        out = _run(["modinfo", "-k", kernel_version, module], f"looking up kernel module {module}")
    except HostError:
        return None  # not shipped with this kernel
    fields: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    filename = fields.get("filename", "")
    if not filename.startswith("/"):
        return None  # "(builtin)": nothing to load
    depends = [name for name in fields.get("depends", "").split(",") if name]
    return Path(filename), depends


ModuleLookup = Callable[[str], tuple[Path, list[str]] | None]


def module_load_order(wanted: tuple[str, ...], lookup: ModuleLookup) -> list[tuple[str, Path]]:
    """Modules to insmod, each after its dependencies (depth-first over ``modinfo`` depends)."""
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in chain:
            raise HostError(f"kernel modules depend on each other in a cycle: {chain}")
        info = lookup(name)
        if info is None:
            if name in REQUIRED_MODULES:
                raise HostError(f"the kernel has no module {name!r}; the guest would have no I/O")
            seen.add(name)
            return
        path, depends = info
        for dependency in depends:
            visit(dependency, (*chain, name))
        seen.add(name)
        order.append((name, path))

    for module in wanted:
        visit(module.replace("-", "_"), ())
    return order


def _module_bytes(path: Path) -> bytes:
    """Module content, decompressed (busybox insmod loads plain .ko files only)."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.zst"):
        raise HostError(f"{path} is zstd-compressed, which kvmgr cannot unpack yet")
    return data


def _guest_file(name: str) -> bytes:
    return resources.files("kvmgr.images").joinpath("guest", name).read_bytes()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gather_inputs(kernel_version: str | None = None) -> tuple[Inputs, list[tuple[str, Path]]]:
    kernel_version = kernel_version or find_kernel()
    modules = module_load_order(WANTED_MODULES, lambda name: module_info(kernel_version, name))
    scripts = b"".join(_guest_file(name) for name in _GUEST_FILES)
    inputs = Inputs(
        kernel_version=kernel_version,
        kernel_sha256=_sha256(Path(f"/boot/vmlinuz-{kernel_version}").read_bytes()),
        busybox_version=busybox_version(),
        modules=tuple(name for name, _ in modules),
        scripts_sha256=_sha256(scripts),
    )
    return inputs, modules


# --------------------------------------------------------------------------- the image
def initramfs_entries(modules: list[tuple[str, Path]]) -> list[Entry]:
    """The guest's whole root file system: busybox, init, scripts, modules."""
    entries = [directory(name) for name in ("bin", "sbin", "dev", "etc", "etc/kvmgr", "lib")]
    entries += [directory(name) for name in ("lib/modules", "proc", "sys", "run", "tmp", "root")]
    entries += [directory("etc/acpi"), directory("etc/acpi/PWRF"), directory("var")]
    # The kernel opens /dev/console before /init runs; devtmpfs is mounted only later.
    entries += [char_device("dev/console", 5, 1), char_device("dev/ttyS0", 4, 64)]
    entries.append(regular("bin/busybox", BUSYBOX.read_bytes(), executable=True))
    applets = _run([str(BUSYBOX), "--list"], "listing busybox applets").split()
    entries += [symlink(f"bin/{applet}", "busybox") for applet in applets if applet != "busybox"]
    entries.append(symlink("init", "bin/busybox"))  # busybox init, configured by /etc/inittab
    entries.append(symlink("var/run", "../run"))
    entries.append(regular("etc/inittab", _guest_file("inittab")))
    entries.append(regular("etc/profile", _guest_file("profile.sh")))
    entries.append(regular("etc/kvmgr/rc.sh", _guest_file("rc.sh"), executable=True))
    entries.append(regular("etc/kvmgr/udhcpc.sh", _guest_file("udhcpc.sh"), executable=True))
    for script in ("ssh-banner.sh", "kvmgr-agent.sh"):
        entries.append(regular(f"etc/kvmgr/{script}", _guest_file(script), executable=True))
    entries.append(regular("bin/kvmgr-ready", _guest_file("kvmgr-ready.sh"), executable=True))
    button = _guest_file("power-button.sh")
    entries.append(regular("etc/acpi/PWRF/00000080", button, executable=True))
    order = "".join(f"{name}\n" for name, _ in modules).encode()
    entries.append(regular("etc/kvmgr/modules.order", order))
    entries += [regular(f"lib/modules/{name}.ko", _module_bytes(path)) for name, path in modules]
    entries.append(regular("etc/hostname", b"kvmgr-demo\n"))
    return entries


def _isolinux_cfg() -> bytes:
    # timeout is in tenths of a second: boot straight away.
    lines = [
        "SERIAL 0 115200",
        "DEFAULT kvmgr",
        "PROMPT 0",
        "TIMEOUT 1",
        "LABEL kvmgr",
        "  KERNEL /boot/vmlinuz",
        f"  APPEND initrd=/boot/initrd.gz {KERNEL_CMDLINE}",
    ]
    return ("\n".join(lines) + "\n").encode()


def _stage(root: Path, kernel_version: str, initrd: bytes) -> None:
    (root / "isolinux").mkdir()
    (root / "boot").mkdir()
    files = {
        "isolinux/isolinux.bin": ISOLINUX_BIN.read_bytes(),
        "isolinux/ldlinux.c32": LDLINUX_C32.read_bytes(),
        "isolinux/isolinux.cfg": _isolinux_cfg(),
        "boot/vmlinuz": Path(f"/boot/vmlinuz-{kernel_version}").read_bytes(),
        "boot/initrd.gz": initrd,
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    for path in [root, *root.rglob("*")]:
        os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))


def _xorriso(stage: Path, output: Path) -> None:
    argv = [
        "xorriso", "-as", "mkisofs",
        "-o", str(output),
        "-V", VOLUME_ID,
        "-r", "-J",
        "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
        "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
        str(stage),
    ]  # fmt: skip
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, env=env, timeout=300)
    except FileNotFoundError as err:
        raise HostError(
            "building the demo ISO: xorriso is not installed", hint=_hint_for("xorriso")
        ) from err
    except subprocess.CalledProcessError as err:
        raise HostError(f"xorriso failed to build the demo ISO: {err.stderr.strip()}") from err


def _check_tools() -> None:
    for path, package in ((ISOLINUX_BIN, "isolinux"), (LDLINUX_C32, "syslinux-common")):
        if not path.exists():
            raise HostError(f"{path} not found", hint=_INSTALL_HINT.format(package=package))


def stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".stamp")


def _read_stamp(path: Path) -> Inputs | None:
    try:
        data = json.loads(stamp_path(path).read_text())
        data["modules"] = tuple(data["modules"])
        return Inputs(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def build_demo_iso(path: str | Path, *, force: bool = False) -> DemoIso:
    """Build the demo ISO at ``path``, or reuse the one there when its inputs are unchanged."""
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise InvalidInput(
            f"{target} is a directory", hint="give the path of the ISO file to write"
        )
    if not target.parent.is_dir():
        raise InvalidInput(f"directory {target.parent} does not exist", hint="create it first")
    _check_tools()
    inputs, modules = gather_inputs()
    # Test runs in parallel share one cached ISO: one builds, the others wait and reuse it.
    with _locked(target.with_name(target.name + ".lock")):
        if not force and target.exists() and _read_stamp(target) == inputs:
            return DemoIso(target, VOLUME_ID, inputs, reused=True)
        _build(target, inputs, modules)
    return DemoIso(target, VOLUME_ID, inputs, reused=False)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        handle = path.open("a")
    except OSError as err:
        raise InvalidInput(
            f"cannot write {path}: {err.strerror}", hint="choose a writable directory"
        ) from err
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(target: Path, inputs: Inputs, modules: list[tuple[str, Path]]) -> None:
    initrd = initramfs.gzipped_cpio(initramfs_entries(modules))
    # Build next to the target and rename, so a failed or interrupted build never leaves a
    # half-written ISO under the real name, and nothing is left in /tmp.
    with tempfile.TemporaryDirectory(prefix=".kvmgr-iso-", dir=target.parent) as workdir:
        stage = Path(workdir) / "root"
        stage.mkdir()
        _stage(stage, inputs.kernel_version, initrd)
        partial = Path(workdir) / "demo.iso"
        _xorriso(stage, partial)
        stamp_path(target).unlink(missing_ok=True)  # a stale stamp must never vouch for a new ISO
        partial.chmod(0o644)
        partial.replace(target)
    stamp_path(target).write_text(json.dumps(asdict(inputs), indent=2) + "\n")


def remove_demo_iso(path: str | Path) -> None:
    """Delete an ISO built here together with its stamp."""
    target = Path(path)
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    stamp_path(target).unlink(missing_ok=True)
