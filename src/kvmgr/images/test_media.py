"""Installer and cloud-image test media, built from the demo guest: no download needed.

Two variants of the demo system (:mod:`kvmgr.images.demo_iso`) carry ``guest/media.sh``, which
reads what kvmgr delivers the way a real installer or cloud-init would:

* :func:`build_installer_iso` lays the ISO out like Rocky Linux media (its volume id, a
  ``.treeinfo``, ``images/pxeboot/vmlinuz`` and ``initrd.img``, ``isolinux/``), so osinfo-db
  detects it as Rocky and kvmgr's extraction and injection take the real path.  Booted with
  ``inst.ks=file:/...`` it "installs": it prints the kickstart's checksum and its
  rootpw/user/sshkey lines, copies itself to /dev/vda and powers off.
* :func:`build_cloud_image` is the same system as a bootable qcow2 disk whose init applies a
  NoCloud seed (hostname, SSH keys, runcmd, static addresses from network-config).

Both are hybrid ISO images (isohybrid MBR), so the same bytes boot from a CD and from a disk.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from kvmgr.errors import HostError
from kvmgr.images import demo_iso, initramfs
from kvmgr.images.initramfs import regular

ROCKY_VOLUME_ID = "Rocky-9-3-x86_64-dvd"
CLOUD_VOLUME_ID = "KVMGR_CLOUD"
#: The SATA CD-ROM (q35) and ISO 9660 drivers media.sh needs on top of the demo's modules.
MEDIA_MODULES = ("ahci", "sr_mod", "isofs")
ISOHYBRID_MBR = Path("/usr/lib/ISOLINUX/isohdpfx.bin")
BUILDER_VERSION = "1"


@dataclass(frozen=True)
class MediaInputs:
    demo: demo_iso.Inputs
    volume_id: str
    media_sha256: str
    builder_version: str = BUILDER_VERSION


def _inputs(volume_id: str) -> tuple[MediaInputs, list[tuple[str, Path]]]:
    base, _modules = demo_iso.gather_inputs()
    modules = demo_iso.module_load_order(
        demo_iso.WANTED_MODULES + MEDIA_MODULES,
        lambda name: demo_iso.module_info(base.kernel_version, name),
    )
    media = demo_iso._guest_file("media.sh")
    return MediaInputs(base, volume_id, demo_iso._sha256(media)), modules


def _initrd(modules: list[tuple[str, Path]]) -> bytes:
    entries = demo_iso.initramfs_entries(modules)
    entries.append(regular("etc/kvmgr/media.sh", demo_iso._guest_file("media.sh"), executable=True))
    return initramfs.gzipped_cpio(entries)


def _treeinfo() -> bytes:
    # The sections anaconda and virt-install read: [general]/[tree] for the release, and
    # [images-x86_64] for the kernel and initrd paths.
    return (
        b"[header]\ntype = productmd.treeinfo\nversion = 1.2\n\n"
        b"[release]\nname = Rocky Linux\nshort = Rocky\nversion = 9.3\n\n"
        b"[general]\narch = x86_64\nfamily = Rocky Linux\nname = Rocky Linux 9.3\n"
        b"platforms = x86_64,xen\nversion = 9.3\n\n"
        b"[tree]\narch = x86_64\nplatforms = x86_64,xen\nvariants = BaseOS,AppStream\n\n"
        b"[images-x86_64]\nkernel = images/pxeboot/vmlinuz\ninitrd = images/pxeboot/initrd.img\n"
        b"boot.iso = images/boot.iso\n\n"
        b"[variant-BaseOS]\nid = BaseOS\nname = BaseOS\npackages = BaseOS/Packages\n"
        b"repository = BaseOS\ntype = variant\nuid = BaseOS\n"
    )


def _stage(root: Path, kernel: bytes, initrd: bytes, *, rocky: bool) -> None:
    files = {
        "isolinux/isolinux.bin": demo_iso.ISOLINUX_BIN.read_bytes(),
        "isolinux/ldlinux.c32": demo_iso.LDLINUX_C32.read_bytes(),
        "isolinux/isolinux.cfg": demo_iso._isolinux_cfg()
        .replace(b"/boot/vmlinuz", b"/isolinux/vmlinuz")
        .replace(b"/boot/initrd.gz", b"/isolinux/initrd.img"),
        "isolinux/vmlinuz": kernel,
        "isolinux/initrd.img": initrd,
    }
    if rocky:
        files[".treeinfo"] = _treeinfo()
        files["images/pxeboot/vmlinuz"] = kernel
        files["images/pxeboot/initrd.img"] = initrd
        files["BaseOS/repodata/repomd.xml"] = b"<repomd/>\n"
    for name, data in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _xorriso(stage: Path, output: Path, volume_id: str) -> None:
    argv = [
        "xorriso", "-as", "mkisofs", "-o", str(output), "-V", volume_id, "-r", "-J",
        "-isohybrid-mbr", str(ISOHYBRID_MBR),
        "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
        "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", str(stage),
    ]  # fmt: skip
    env = {"SOURCE_DATE_EPOCH": str(demo_iso.SOURCE_DATE_EPOCH), "PATH": "/usr/bin:/bin"}
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, env=env, timeout=300)
    except (OSError, subprocess.CalledProcessError) as err:
        raise HostError(f"xorriso failed to build test media: {err}") from err


def _build_iso(target: Path, volume_id: str, *, rocky: bool) -> Path:
    inputs, modules = _inputs(volume_id)
    stamp = target.with_name(target.name + ".stamp")
    wanted = json.dumps(asdict(inputs), sort_keys=True)
    with demo_iso._locked(target.with_name(target.name + ".lock")):
        if target.exists() and stamp.exists() and stamp.read_text() == wanted:
            return target
        kernel = Path(f"/boot/vmlinuz-{inputs.demo.kernel_version}").read_bytes()
        with tempfile.TemporaryDirectory(prefix=".kvmgr-media-", dir=target.parent) as workdir:
            stage = Path(workdir) / "root"
            _stage(stage, kernel, _initrd(modules), rocky=rocky)
            partial = Path(workdir) / "media.iso"
            _xorriso(stage, partial, volume_id)
            stamp.unlink(missing_ok=True)
            partial.chmod(0o644)
            partial.replace(target)
        stamp.write_text(wanted)
    return target


def build_installer_iso(path: str | Path) -> Path:
    """The Rocky-like installer ISO at ``path`` (reused while its inputs are unchanged)."""
    return _build_iso(Path(path).absolute(), ROCKY_VOLUME_ID, rocky=True)


def build_cloud_image(path: str | Path) -> Path:
    """The demo cloud image (qcow2) at ``path``: the hybrid image converted with qemu-img."""
    target = Path(path).absolute()
    raw = _build_iso(target.with_name(target.stem + "-raw.iso"), CLOUD_VOLUME_ID, rocky=False)
    if target.exists() and target.stat().st_mtime >= raw.stat().st_mtime:
        return target
    partial = target.with_name(f".{target.name}.partial")
    try:
        # Test media made on this host, before any libvirt object exists: qemu-img is the tool.
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(partial)],
            check=True, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as err:
        raise HostError(f"qemu-img could not make the demo cloud image: {err}") from err
    partial.chmod(0o644)
    partial.replace(target)
    return target
