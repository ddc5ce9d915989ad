"""Unattended install against another libvirtd, reached over qemu+ssh (a lab host).

Nothing here may assume the host shares this machine's files: the ISO is imported through the
stream, kvmgr reads its .treeinfo, kernel and initrd through ranged volume downloads, and the
installer kernel and initrd (with the kickstart) travel back as volumes.  The stand-in installer
proves the kickstart arrived (its checksum) and the VM comes up from its disk on that host.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmgr.connect import Connection
from kvmgr.errors import KvmgrError
from kvmgr.host import lab as labs
from kvmgr.images.test_media import build_installer_iso
from kvmgr.services import isos, vms
from kvmgr.services.create import DiskRequest, VMSpec
from kvmgr.services.installs import create_unattended
from kvmgr.services.unattended import UnattendedRequest
from kvmgr.units import GIB, MIB
from tests.integration.conftest import DEMO_ISO_CACHE

NAME = "t-inst-remote"
ISO_NAME = "t-inst-rocky-demo.iso"


@pytest.fixture
def remote(lab: labs.Lab, lab_ssh: list[Connection]) -> Iterator[Connection]:
    conn = lab_ssh[-1]
    _clean(conn)
    yield conn
    _clean(conn)


def _clean(conn: Connection) -> None:
    with contextlib.suppress(KvmgrError):
        vms.delete(conn, NAME, force=True)
    with contextlib.suppress(KvmgrError):
        isos.delete_iso(conn, ISO_NAME)


def test_unattended_install_on_a_remote_host(remote: Connection, tmp_path: Path) -> None:
    iso = build_installer_iso(DEMO_ISO_CACHE.parent / "rocky-demo.iso")
    info = isos.import_iso(remote, iso, name=ISO_NAME)
    assert info.os_id == "rocky9"
    (tmp_path / "pw").write_text("remote-pw\n")
    said: list[str] = []
    spec = VMSpec(
        name=NAME, iso=ISO_NAME, memory=384 * MIB, vcpus=1, graphics="none",
        disks=[DiskRequest(size=GIB)], nics=[], wait_timeout=300,
    )  # fmt: skip
    result = create_unattended(
        remote,
        spec,
        UnattendedRequest(root_password_file=str(tmp_path / "pw")),
        wait="ready",
        progress=said.append,
    )
    transcript = "\n".join(said)
    found = re.search(r"KVMGR-KS-FOUND /rhel.ks sha256=([0-9a-f]{64})", transcript)
    assert found and found.group(1) == result.script_sha256
    assert "KVMGR-INSTALL-DONE" in transcript
    dom = vms.lookup(remote, NAME)
    assert dom.isActive() and "<kernel>" not in dom.XMLDesc(0)
    assert "remote-pw" not in transcript + dom.XMLDesc(0)
