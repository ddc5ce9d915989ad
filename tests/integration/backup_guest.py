"""What the backup tests do with a demo guest and its disk, on the local daemon or a lab host.

The demo guest runs from RAM, so its qcow2 data disk is a raw block device to it: it writes
random blocks with dd and reports ``sha256sum /dev/vda``; a restored image is hashed after
downloading it through libvirt (so the same check works on a remote host) and converting it to
raw with qemu-img.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from kvmgr.connect import Connection
from tests.integration.guest import GuestShell


def write_blocks(conn: Connection, name: str, seek_mib: list[int]) -> str:
    """Random 256 KiB blocks at ``seek_mib``; returns the guest's sha256 of the whole disk."""
    with GuestShell.open(conn, name) as shell:
        shell.wait_ready()
        for seek in seek_mib:
            shell.run(
                f"dd if=/dev/urandom of=/dev/vda bs=64k count=4 seek={seek * 16} "
                "conv=notrunc,fsync 2>/dev/null"
            )
        return guest_hash(shell)


def guest_hash(shell: GuestShell) -> str:
    shell.run("sync; echo 3 > /proc/sys/vm/drop_caches")
    return shell.run("sha256sum /dev/vda", timeout=120).split()[0]


def image_hash(conn: Connection, path: str, tmp: Path) -> str:
    """sha256 of the disk image at ``path`` on ``conn``'s host, as the guest would read it."""
    image, raw = tmp / "disk.img", tmp / "disk.raw"
    vol = conn.virconn.storageVolLookupByPath(path)
    stream = conn.virconn.newStream(0)
    vol.download(stream, 0, 0, 0)
    with image.open("wb") as out:
        while data := stream.recv(1024 * 1024):
            if isinstance(data, int):  # -2: would block; a blocking stream never says so
                raise AssertionError(f"the download of {path} returned {data}")
            out.write(data)
    stream.finish()
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)], check=True)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    image.unlink()
    raw.unlink()
    return digest
