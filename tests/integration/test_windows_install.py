"""A Windows unattended create on the real daemon, with a Windows-like ISO made here.

The ISO carries what osinfo-db's Windows media entries match on (volume id
``CCCOMA_X64FRE_EN-US_DV9``, publisher ``MICROSOFT CORPORATION``: the Windows 10/11 consumer
media, which osinfo-db gives to Windows 10, the release that introduced the id) and Setup's
usual files.  It boots nothing: this proves detection, the answer-file CD (read back from its
volume), the devices, the start, the end-of-install switch and removal, and for Windows 11 the
TPM 2.0 (swtpm) and Secure Boot firmware libvirt runs; it does not install Windows, which needs
a licensed ISO and an hour under KVM.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput
from kvmgr.services import networks, vm_removal, vms
from kvmgr.services.create import DiskRequest, NicRequest, VMSpec
from kvmgr.services.install_media import VolumeReader
from kvmgr.services.installs import create_unattended
from kvmgr.services.networks import NetworkSpec
from kvmgr.services.storage import find_volume_by_path
from kvmgr.services.unattended import UnattendedRequest
from kvmgr.services.windows_install import finish_install
from kvmgr.services.windows_unattend import UNATTEND_FILENAME, read_iso_file
from kvmgr.units import GIB, MIB
from kvmgr.xml.domain import Domain

from .conftest import DEMO_ISO_CACHE, Cleanup

PREFIX = "t-win-"
NET = "t-winnet"  # module-wide: not under PREFIX, which each test purges
PASSWORD = "Winter-2026!not-in-logs"
VOLUME_ID = "CCCOMA_X64FRE_EN-US_DV9"


def build_windows_iso(path: Path) -> Path:
    """A Windows-10-like ISO at ``path`` (what osinfo-db matches, and Setup's usual files)."""
    import pycdlib

    path.parent.mkdir(parents=True, exist_ok=True)
    iso = pycdlib.PyCdlib()
    # No Joliet: its volume id holds 16 characters, the real one 23 (Windows media use UDF).
    iso.new(interchange_level=3, vol_ident=VOLUME_ID, pub_ident_str="MICROSOFT CORPORATION")
    iso.add_directory("/SOURCES")
    for name in ("setup.exe", "bootmgr", "sources/install.wim"):
        data = f"stand-in for {name}\n".encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/{name.upper()};1")
    partial = path.with_suffix(".partial")
    iso.write(str(partial))
    iso.close()
    partial.chmod(0o644)
    partial.replace(path)
    return path


@pytest.fixture(scope="module")
def windows_iso() -> Path:
    return build_windows_iso(DEMO_ISO_CACHE.parent / "windows-like.iso")


@pytest.fixture(scope="module")
def isolated(conn: Connection) -> Iterator[str]:
    from .conftest import remove_network

    remove_network(conn, NET)
    networks.create_network(
        conn, NetworkSpec(NET, mode="isolated", subnet="10.240.97.0/24", bridge="kvt-win0")
    )
    yield NET
    remove_network(conn, NET)


def test_windows_create_attaches_the_answer_file_cd_and_delete_removes_it(
    conn: Connection, cleanup: Cleanup, windows_iso: Path, isolated: str, tmp_path: Path
) -> None:
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}10"
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    request = UnattendedRequest(
        user="alice", password_file=str(tmp_path / "pw"), hostname="WIN-T1", product_key=None
    )
    spec = VMSpec(
        name=name, iso=str(windows_iso), memory=512 * MIB, vcpus=1, graphics="none",
        disks=[DiskRequest(size=GIB)], nics=[NicRequest(source=isolated)], wait_timeout=60,
    )  # fmt: skip
    said: list[str] = []
    result = create_unattended(conn, spec, request, wait="started", progress=said.append)
    assert result.vm.os_id == "win10"
    # Windows 11 media carry the same id: the user is told how to say it is 11
    assert any("give --os win11" in line for line in said)
    assert result.script_source == "osinfo-db http://microsoft.com/windows/unattend/jeos"
    dom = vms.lookup(conn, name)
    assert dom.isActive()
    domain = Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert domain.os.kernel is None and domain.on_reboot == "restart"  # Setup reboots itself
    disks = [(d.device, d.target_bus, d.source_file) for d in domain.devices.disks]
    unattend = f"/var/lib/libvirt/images/{name}-unattend.iso"
    assert [(dev, bus) for dev, bus, _ in disks] == [
        ("disk", "sata"), ("cdrom", "sata"), ("cdrom", "sata")
    ]  # fmt: skip
    assert [src for _, _, src in disks][1:] == [str(windows_iso), unattend]
    assert [nic.model for nic in domain.devices.interfaces] == ["e1000e"]
    # the blank disk boots first and falls through to the install ISO; the answer CD never boots
    assert [d.boot_order for d in domain.devices.disks] == [1, 2, None]
    meta = domain.kvmgr_metadata()
    assert meta is not None and unattend in meta.owned_volumes
    # the CD's autounattend.xml, read back through the volume, is what kvmgr rendered
    vol = find_volume_by_path(conn, unattend)
    assert vol is not None
    image = VolumeReader(conn, vol).readall()
    text = read_iso_file(image, UNATTEND_FILENAME).decode()
    import hashlib

    assert hashlib.sha256(text.encode()).hexdigest() == result.script_sha256
    assert "<Name>alice</Name>" in text and "<ComputerName>WIN-T1</ComputerName>" in text
    assert PASSWORD not in text + "\n".join(said) + dom.XMLDesc(0) + repr(result.as_dict())
    # Setup's closing power-off, then the switch kvmgr makes: no media, the volume gone
    dom.destroy()
    finish_install(conn, name, str(windows_iso), unattend)
    domain = Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert [d.device for d in domain.devices.disks] == ["disk"]
    assert find_volume_by_path(conn, unattend) is None


def test_windows_delete_removes_the_answer_cd_and_bad_names_make_nothing(
    conn: Connection, cleanup: Cleanup, windows_iso: Path, tmp_path: Path
) -> None:
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}del"
    spec = VMSpec(
        name=name, iso=str(windows_iso), memory=512 * MIB, vcpus=1, graphics="none",
        disks=[DiskRequest(size=GIB)], nics=[], wait_timeout=60,
    )  # fmt: skip
    too_long = UnattendedRequest(user="alice", hostname="a-sixteen-chars1")
    with pytest.raises(InvalidInput, match="NetBIOS"):
        create_unattended(conn, spec, too_long, wait="started")
    assert not vms.exists(conn, name)
    create_unattended(conn, spec, UnattendedRequest(user="alice"), wait="started")
    unattend = f"/var/lib/libvirt/images/{name}-unattend.iso"
    assert find_volume_by_path(conn, unattend) is not None
    deleted = vm_removal.delete(conn, name, force=True)
    assert unattend in deleted and find_volume_by_path(conn, unattend) is None
    assert not vms.exists(conn, name)


def test_windows_11_runs_with_tpm_and_secure_boot_and_delete_removes_their_state(
    conn: Connection, cleanup: Cleanup, windows_iso: Path, tmp_path: Path
) -> None:
    """The same media as Windows 11 (osinfo-db gives Windows 10 and 11 one volume-id pattern,
    so ``--os win11`` names it): libvirt starts swtpm and Secure Boot OVMF for it, and
    ``vm delete`` leaves neither the TPM's state nor the NVRAM file."""
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}11"
    spec = VMSpec(
        name=name, iso=str(windows_iso), os="win11", memory=512 * MIB, vcpus=1,
        graphics="none", disks=[DiskRequest(size=GIB)], nics=[], wait_timeout=60,
    )  # fmt: skip
    result = create_unattended(conn, spec, UnattendedRequest(user="alice"), wait="started")
    assert result.vm.os_id == "win11"
    dom = vms.lookup(conn, name)
    assert dom.isActive()
    live = Domain.from_xml(dom.XMLDesc(0))
    # libvirt resolved the auto-selection to a Secure Boot build with its own variable store
    assert live.os.loader_secure and live.os.loader_type == "pflash"
    # ... whose variable store starts from the template with Microsoft's keys enrolled (Debian
    # names those builds *.ms.fd), which is what Windows' boot loader is signed with
    nvram_node = live.element.find("os/nvram")
    assert nvram_node is not None and ".ms." in (nvram_node.get("template") or "")
    nvram = live.os.nvram
    assert nvram and Path(nvram).exists()
    assert live.features.smm_state == "on"
    assert [(t.model, t.backend_type, t.backend_version) for t in live.devices.tpms] == [
        ("tpm-crb", "emulator", "2.0")
    ]
    tpm_state = Path("/var/lib/libvirt/swtpm") / dom.UUIDString()
    assert tpm_state.is_dir()  # swtpm is running for it: libvirt made its state
    vm_removal.delete(conn, name, force=True)
    assert not vms.exists(conn, name)
    assert not tpm_state.exists() and not Path(nvram).exists()


def test_a_delete_that_keeps_the_disks_keeps_the_tpm_state_and_nvram(
    conn: Connection, cleanup: Cleanup, windows_iso: Path
) -> None:
    """``vm delete --keep-disks`` of a Windows 11 VM: a disk BitLocker sealed to the VM's TPM is
    unreadable without that state, so it stays (and the NVRAM with it) for a VM redefined with
    the same UUID."""
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}11k"
    spec = VMSpec(
        name=name, iso=str(windows_iso), os="win11", memory=512 * MIB, vcpus=1,
        graphics="none", disks=[DiskRequest(size=GIB)], nics=[], wait_timeout=60,
    )  # fmt: skip
    create_unattended(conn, spec, UnattendedRequest(user="alice"), wait="started")
    dom = vms.lookup(conn, name)
    nvram = Domain.from_xml(dom.XMLDesc(0)).os.nvram
    tpm_state = Path("/var/lib/libvirt/swtpm") / dom.UUIDString()
    assert nvram and tpm_state.is_dir()
    try:
        deleted = vm_removal.delete(conn, name, force=True, keep_disks=True)
        assert deleted == [] and not vms.exists(conn, name)
        assert tpm_state.is_dir() and Path(nvram).exists()
    finally:
        shutil.rmtree(tpm_state, ignore_errors=True)
        Path(nvram).unlink(missing_ok=True)


def test_a_windows_create_through_the_api_gets_its_secrets_from_the_task_secrets(
    conn: Connection, cleanup: Cleanup, windows_iso: Path, tmp_path: Path
) -> None:
    """POST /api/v1/vms on the real daemon, the server's own worker running the task: the
    answer CD holds the obscured passwords and the key the request gave, which were in no task
    row, and the task's secrets are gone once its handler took them."""
    import base64
    import time

    from fastapi.testclient import TestClient

    from kvmgr.api.app import create_app
    from kvmgr.control import task_secrets
    from kvmgr.services.windows_unattend import obscure
    from kvmgr.store import users
    from kvmgr.store.models import Role, Task
    from tests.api.conftest import As, make_settings

    cleanup.prefix(PREFIX)
    name = f"{PREFIX}api"
    admin_password, key = "Api-Admin-2026!", "VK7JG-NPHTM-C97JM-9MPGT-3V66T"
    app = create_app(make_settings(tmp_path / "state", uri="qemu:///system"))
    store = app.state.ctx.store
    with store.session() as session:
        users.create_user(session, "admin", "correct horse battery", Role.admin, None)
        token = users.create_token(session, "admin", "tests")
    body = {
        "name": name, "iso": str(windows_iso), "memory": "512M", "vcpus": 1,
        "graphics": "none", "disks": ["1G"], "networks": [], "wait": "installed",
        "unattended": {"user": "alice", "password": PASSWORD, "root_password": admin_password,
                       "product_key": key, "hostname": "WIN-API"},
    }  # fmt: skip
    unattend = f"/var/lib/libvirt/images/{name}-unattend.iso"
    with TestClient(app) as client:
        caller = As(client, token)
        answer = caller.post("/api/v1/vms", json=body)
        assert answer.status_code == 202, answer.text
        task_id = answer.json()["id"]
        # Setup "runs" (the stand-in ISO boots nothing): the answer CD is attached, readable
        deadline = time.monotonic() + 120
        while (
            "Setup is running"
            not in (task := caller.get(f"/api/v1/tasks/{task_id}").json())["message"]
        ):
            assert task["state"] in ("queued", "running"), task
            assert time.monotonic() < deadline, task
            time.sleep(0.2)
        vol = find_volume_by_path(conn, unattend)
        assert vol is not None and vms.lookup(conn, name).isActive()
        text = read_iso_file(VolumeReader(conn, vol).readall(), UNATTEND_FILENAME).decode()
        assert obscure(PASSWORD, "Password") in text
        assert obscure(admin_password, "AdministratorPassword") in text
        assert key in text and "<ComputerName>WIN-API</ComputerName>" in text
        assert PASSWORD not in text and admin_password not in text
        assert task_secrets.names(store, task_id) == []  # taken when the handler began
        vms.lookup(conn, name).destroy()  # Setup's closing power-off
        while (task := caller.get(f"/api/v1/tasks/{task_id}").json())["state"] == "running":
            assert time.monotonic() < deadline + 60, task
            time.sleep(0.2)
        assert task["state"] == "done", task["error"]
        assert task["result"]["os_id"] == "win10", task
        with store.session() as session:
            row = session.get(Task, task_id)
            assert row is not None
            kept = repr([row.params, row.result, row.error])
        shown = caller.get(f"/api/v1/tasks/{task_id}").text + caller.get("/api/v1/audit").text
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    for secret in (PASSWORD, admin_password, key, encoded):
        assert secret not in kept + shown
    assert find_volume_by_path(conn, unattend) is None  # removed with the install media
