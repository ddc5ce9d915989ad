"""A full clone of a qcow2 disk is a qcow2 v3 image (compat 1.1), as sparse as its source.

libvirt 9.0 converts to qcow2 v2 (compat 0.10) unless the volume XML names a version; v2 has no
zero clusters and copied measurably slower (docs/BENCHMARKS.md).  No guest boots here: the data
is written with qemu-io before the VM is defined.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from kvmgr.connect import Connection
from kvmgr.services import clones
from kvmgr.services.create import DiskRequest, VMSpec, create_vm
from kvmgr.units import MIB
from tests.integration.conftest import Cleanup

pytestmark = pytest.mark.integration

PREFIX = "t-perf2-fmt-"


def _info(path: str) -> dict[str, object]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", path], check=True, capture_output=True
    )
    info: dict[str, object] = json.loads(out.stdout)
    return info


def test_full_clone_is_qcow2_v3_and_sparse(conn: Connection, cleanup: Cleanup) -> None:
    cleanup.prefix(PREFIX)
    source, clone = f"{PREFIX}src", f"{PREFIX}copy"
    create_vm(
        conn,
        VMSpec(
            source,
            os="generic",
            memory=64 * MIB,
            vcpus=1,
            disks=[DiskRequest(size=256 * MIB)],
            graphics="none",
            start=False,
        ),
    )
    src_path = clones.vms.definition(clones.vms.lookup(conn, source)).devices.disks[0].source_path
    assert src_path is not None
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -q -P 0xab 0 32M", src_path],
        check=True,
        capture_output=True,
    )

    result = clones.clone_vm(conn, source, clone)

    (copy,) = result.volumes
    info = _info(copy)
    assert info["format"] == "qcow2"
    assert info["format-specific"]["data"]["compat"] == "1.1"  # type: ignore[index]
    assert info["virtual-size"] == 256 * MIB
    copied = os.stat(copy).st_blocks * 512
    assert 32 * MIB <= copied <= os.stat(src_path).st_blocks * 512 + MIB  # sparse: data only
    same = subprocess.run(
        ["qemu-img", "compare", "-U", src_path, copy], check=False, capture_output=True
    )
    assert same.returncode == 0, same.stdout
