"""The demo ISO builder's pure parts: the cpio writer, module ordering, kernel choice."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from kvmgr.errors import HostError
from kvmgr.images import demo_iso, initramfs
from kvmgr.images.initramfs import char_device, directory, regular, symlink


def test_cpio_archive_is_read_back_by_gnu_cpio(tmp_path: Path) -> None:
    entries = [
        directory("bin"),
        regular("bin/hello", b"#!/bin/sh\necho hi\n", executable=True),
        symlink("init", "bin/hello"),
        char_device("dev-console", 5, 1),
        regular("odd", b"x"),  # lengths not a multiple of 4 exercise the padding
    ]
    archive = gzip.decompress(initramfs.gzipped_cpio(entries))
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    lines = listing.splitlines()
    assert [line.split()[-1] for line in lines if "->" not in line] == [
        "bin", "bin/hello", "dev-console", "odd",
    ]  # fmt: skip
    assert any(line.startswith("lrwxrwxrwx") and "init -> bin/hello" in line for line in lines)
    assert any(line.startswith("crw-------") and "5,   1" in line for line in lines)
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames"],
        input=archive, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert (tmp_path / "bin" / "hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "bin" / "hello").stat().st_mode & 0o111


def test_same_entries_give_identical_bytes() -> None:
    entries = [directory("etc"), regular("etc/hostname", b"kvmgr-demo\n")]
    assert initramfs.gzipped_cpio(entries) == initramfs.gzipped_cpio(entries)


FAKE_MODULES = {
    "virtio_ring": [],
    "virtio": ["virtio_ring"],
    "virtio_pci_modern_dev": [],
    "virtio_pci": ["virtio_ring", "virtio_pci_modern_dev", "virtio"],
    "failover": [],
    "net_failover": ["failover"],
    "virtio_net": ["virtio_ring", "virtio", "net_failover"],
    "virtio_blk": ["virtio", "virtio_ring"],
}


def fake_lookup(name: str) -> tuple[Path, list[str]] | None:
    if name not in FAKE_MODULES:
        return None
    return Path(f"/m/{name}.ko"), FAKE_MODULES[name]


def test_modules_come_after_their_dependencies() -> None:
    order = [name for name, _ in demo_iso.module_load_order(demo_iso.WANTED_MODULES, fake_lookup)]
    for module, depends in FAKE_MODULES.items():
        for dependency in depends:
            assert order.index(dependency) < order.index(module), (dependency, module)
    assert order[0] == "virtio_ring"
    assert "virtio_scsi" not in order  # optional and absent: skipped


def test_missing_required_module_is_an_error_that_says_why() -> None:
    with pytest.raises(HostError, match="virtio_blk"):
        demo_iso.module_load_order(("virtio_blk",), lambda name: None)


def test_dependency_cycle_is_reported() -> None:
    cyclic = {"a": ["b"], "b": ["a"]}
    with pytest.raises(HostError, match="cycle"):
        demo_iso.module_load_order(("a",), lambda n: (Path(n), cyclic[n]))


def test_newest_kernel_with_modules_is_chosen(tmp_path: Path) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for version in ("6.1.0-9-amd64", "6.1.0-10-amd64", "6.2.0-1-amd64"):
        (boot / f"vmlinuz-{version}").write_bytes(b"")
    (modules / "6.1.0-9-amd64").mkdir(parents=True)
    (modules / "6.1.0-10-amd64").mkdir()  # 6.2 has no modules installed: not usable
    assert demo_iso.find_kernel(boot, modules) == "6.1.0-10-amd64"


def test_no_kernel_points_at_the_package(tmp_path: Path) -> None:
    with pytest.raises(HostError) as err:
        demo_iso.find_kernel(tmp_path, tmp_path)
    assert "linux-image-amd64" in (err.value.hint or "")


def test_isolinux_boots_at_once_with_a_serial_console() -> None:
    cfg = demo_iso._isolinux_cfg().decode()
    assert "TIMEOUT 1" in cfg
    assert "console=ttyS0,115200" in cfg
    assert cfg.index("console=tty0") < cfg.index("console=ttyS0")  # last one is /dev/console
