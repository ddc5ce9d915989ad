"""``vm create --image N --cloud-init``: a VM on a linked overlay of a cloud image, with a seed.

The VM's disk is a qcow2 overlay of the library's base (kvmgr.services.cloud_images), grown to
the requested size; a NoCloud seed (kvmgr.services.cloudinit) is attached as a CD-ROM.  The seed
volume is the VM's (deleted with it) and its CD-ROM is ``startupPolicy="optional"``: once cloud-
init has run the seed may go, and the VM still starts without it.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, replace
from typing import Any

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, KvmgrError
from kvmgr.services import vms
from kvmgr.services.cloud_images import get_image
from kvmgr.services.cloudinit import CloudInitRequest, Seed, build_seed
from kvmgr.services.create import CreateResult, DiskRequest, VMSpec, create_vm
from kvmgr.services.install_media import upload_bytes
from kvmgr.services.steps import LocalSteps, Steps
from kvmgr.xml.domain import Disk, Domain


@dataclass
class CloudResult:
    vm: CreateResult
    image: str
    seed_volume: str
    macs: list[str]
    user_data: str
    network_config: str

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.vm.__dict__)
        data.update(image=self.image, seed_volume=self.seed_volume, macs=self.macs)
        return data


def _random_mac() -> str:
    # 52:54:00 is QEMU's prefix, the one libvirt itself draws from.
    return "52:54:00:" + ":".join(f"{secrets.randbelow(256):02x}" for _ in range(3))


def seed_cdrom(domain: Domain, path: str) -> Disk:
    """A read-only CD-ROM for the seed on the next free SATA (q35) or IDE unit."""
    q35 = (domain.os.machine or "").startswith("q35") or domain.os.machine == "q35"
    bus = "sata" if q35 else "ide"
    used = {disk.target_dev for disk in domain.devices.disks}
    names = (f"sd{c}" for c in "abcdefghijklmnopqrstuvwxyz") if q35 else iter(("hdc", "hdd", "hdb"))
    cdrom = Disk()
    cdrom.type, cdrom.device = "file", "cdrom"
    cdrom.driver_name, cdrom.driver_type = "qemu", "raw"
    cdrom.source_file = path
    cdrom.source_startup_policy = "optional"
    cdrom.target_dev = next(name for name in names if name not in used)
    cdrom.target_bus = bus
    cdrom.readonly = True
    return cdrom


def create_from_image(
    conn: Connection,
    spec: VMSpec,
    image_name: str,
    request: CloudInitRequest | None,
    *,
    steps: Steps | None = None,
    progress: Any = None,
) -> CloudResult:
    """Create ``spec`` on an overlay of image ``image_name`` with a cloud-init seed."""
    say = progress or (lambda _message: None)
    own = steps is None
    journal: Steps = steps if steps is not None else LocalSteps(say)
    try:
        return _create(conn, spec, image_name, request, journal, say)
    except BaseException as err:
        if own and isinstance(journal, LocalSteps):
            problems = journal.recover(conn)
            if problems and isinstance(err, KvmgrError):
                err.message += "; cleaning up also failed: " + "; ".join(problems)
        raise


def _create(
    conn: Connection,
    spec: VMSpec,
    image_name: str,
    request: CloudInitRequest | None,
    steps: Steps,
    say: Any,
) -> CloudResult:
    from kvmgr.services.storage import create_volume

    if spec.iso:
        raise InvalidInput("--image and --iso exclude each other", hint="give one of them")
    if vms.exists(conn, spec.name):
        raise InvalidInput(f"a VM named {spec.name!r} already exists", hint="choose another name")
    image = get_image(conn, image_name)
    first = spec.disks[0] if spec.disks else DiskRequest()
    if first.path is not None:
        raise InvalidInput("--image makes the first disk itself", hint="drop --disk path=")
    size = max(first.size or image.size, image.size)
    # MACs are chosen here, so network-config can match each NIC by its address.
    nics = [replace(nic, mac=nic.mac or _random_mac()) for nic in spec.nics]
    macs = [nic.mac or "" for nic in nics]
    seed: Seed | None = None
    if request is not None:
        seed = build_seed(request, instance_id=str(uuid.uuid4()), vm_name=spec.name, macs=macs)
    say(f"making a {size // 2**30 or 1} GiB overlay of image {image.name}")
    # Used until the VM is defined: a pool delete --force would otherwise take the overlay,
    # which no VM uses yet, and the define would name a file that is gone.
    steps.uses("pool", first.pool)
    steps.uses("volume", first.pool, f"{spec.name}.qcow2")
    steps.undo_with("volume.delete", pool=first.pool, name=f"{spec.name}.qcow2")
    overlay = create_volume(
        conn,
        first.pool,
        f"{spec.name}.qcow2",
        size,
        "qcow2",
        backing_path=image.path,
        backing_format=image.format,
    )
    seed_path = ""
    if seed is not None:
        seed_name = f"{spec.name}-seed-{seed.digest}.iso"
        say(f"uploading the cloud-init seed {seed_name}")
        seed_path = upload_bytes(conn, first.pool, seed_name, seed.iso, steps)
    owned = [path for path in (overlay.path, seed_path) if path]

    def attach(domain: Domain) -> None:
        meta = domain.kvmgr_metadata(create=True)
        assert meta is not None
        meta.owned_volumes = [*meta.owned_volumes, *owned]
        if seed_path:
            domain.devices.disks.append(seed_cdrom(domain, seed_path))

    vm_spec = replace(
        spec,
        os=image.os_id if spec.os == "auto" else spec.os,
        disks=[DiskRequest(path=overlay.path, pool=first.pool), *spec.disks[1:]],
        nics=nics,
        customize=[*spec.customize, attach],
    )
    result = create_vm(conn, vm_spec, progress=say, steps=steps)
    result.volumes = [*owned, *result.volumes]
    return CloudResult(
        vm=result,
        image=image.name,
        seed_volume=seed_path,
        macs=macs,
        user_data=seed.user_data if seed else "",
        network_config=seed.network_config if seed else "",
    )
