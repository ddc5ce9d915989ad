"""Unattended installs and cloud images on the real daemon, with media made here.

* The Rocky-like installer ISO (kvmgr.images.test_media) is detected as Rocky Linux 9 by
  osinfo-db; kvmgr reads its kernel and initrd with pycdlib (paths from .treeinfo), appends
  the kickstart osinfo-db's template made, and boots it directly with the template's kernel
  arguments.  Its stand-in installer prints the kickstart's checksum and lines, copies itself
  to the disk and powers off; kvmgr switches the VM to its disk and it boots from there.
* The demo cloud image boots on an overlay with a NoCloud seed: its init applies hostname,
  SSH key and a static address from network-config on an isolated network.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import yaml

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, NotFound, OperationFailed
from kvmgr.host.daemons import DEFAULT_NETNS
from kvmgr.images.test_media import build_cloud_image, build_installer_iso
from kvmgr.services import networks, vms
from kvmgr.services.cloud_images import delete_image, get_image, import_image, list_images
from kvmgr.services.cloud_vms import create_from_image
from kvmgr.services.cloudinit import CloudInitRequest
from kvmgr.services.create import DiskRequest, NicRequest, VMSpec
from kvmgr.services.installs import create_unattended
from kvmgr.services.networks import NetworkSpec
from kvmgr.services.storage import find_volume_by_path
from kvmgr.services.unattended import UnattendedRequest
from kvmgr.units import GIB, MIB
from kvmgr.xml.domain import Domain

from .conftest import DEMO_ISO_CACHE, Cleanup, purge_prefix
from .guest import GuestShell

PREFIX = "t-inst-"
PASSWORD = "not-in-any-log-7"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl t@kvmgr"
NET = "t-instnet-iso"  # module-wide: not under PREFIX, which each test purges
STATIC_IP = "10.240.41.50"


@pytest.fixture(scope="module")
def media() -> dict[str, Path]:
    cache = DEMO_ISO_CACHE.parent
    cache.mkdir(parents=True, exist_ok=True)
    return {
        "iso": build_installer_iso(cache / "rocky-demo.iso"),
        "cloud": build_cloud_image(cache / "cloud-demo.qcow2"),
    }


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    (tmp_path / "pw").chmod(0o600)
    (tmp_path / "key.pub").write_text(KEY + "\n")
    return tmp_path


def _spec(name: str, **extra: object) -> VMSpec:
    spec = VMSpec(name=name, memory=384 * MIB, vcpus=1, graphics="none", wait_timeout=240)
    for key, value in extra.items():
        setattr(spec, key, value)
    return spec


def test_unattended_rocky_install_switches_to_disk_and_boots(
    conn: Connection, cleanup: Cleanup, media: dict[str, Path], secrets_dir: Path
) -> None:
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}rocky"
    request = UnattendedRequest(
        user="alice",
        password_file=str(secrets_dir / "pw"),
        root_password_file=str(secrets_dir / "pw"),
        ssh_key_files=[str(secrets_dir / "key.pub")],
    )
    said: list[str] = []
    spec = _spec(name, iso=str(media["iso"]), disks=[DiskRequest(size=GIB)])
    result = create_unattended(conn, spec, request, wait="ready", progress=said.append)
    transcript = "\n".join(said)
    # osinfo-db detected the media and its template made the kickstart
    assert result.vm.os_id == "rocky9"
    assert result.script_source == "osinfo-db http://redhat.com/rhel/kickstart/jeos"
    assert result.kernel_cmdline.startswith("inst.ks=file:/rhel.ks inst.stage2=hd:LABEL=Rocky-9")
    # the installer found the kickstart in its initrd: same checksum, the lines kvmgr made
    found = re.search(r"KVMGR-KS-FOUND /rhel.ks sha256=([0-9a-f]{64})", transcript)
    assert found and found.group(1) == result.script_sha256
    assert "installer: KVMGR-KS-LINE rootpw --iscrypted $6$..." in transcript
    assert "installer: KVMGR-KS-LINE user --name=alice --groups=wheel --iscrypted" in transcript
    assert f'installer: KVMGR-KS-LINE sshkey --username=alice "{KEY}"' in transcript
    assert "KVMGR-INSTALL-DONE" in transcript
    # it then came up from its disk: no installer kernel, no media, reboots restart it
    dom = vms.lookup(conn, name)
    assert dom.isActive()
    domain = Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert domain.os.kernel is None and domain.os.cmdline is None
    assert domain.on_reboot == "restart"
    assert [d.device for d in domain.devices.disks] == ["disk"]
    # the installer booted without balloon room; the installed VM has its ceiling back
    assert domain.memory_bytes == result.vm.max_memory == 2 * domain.current_memory_bytes
    meta = domain.kvmgr_metadata()
    assert meta is not None and meta.owned_volumes == result.vm.volumes
    assert find_volume_by_path(conn, f"/var/lib/libvirt/images/{name}-install-initrd.img") is None
    # the password appears nowhere: not in progress, the definition or the result
    assert PASSWORD not in transcript + dom.XMLDesc(0) + repr(result.as_dict())
    with GuestShell.open(conn, name) as shell:
        assert "vda" in shell.run("cat /proc/partitions")


def test_unattended_refuses_a_bad_kickstart_before_making_anything(
    conn: Connection, cleanup: Cleanup, media: dict[str, Path], tmp_path: Path
) -> None:
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}badks"
    (tmp_path / "bad.ks").write_text("rootpw --lock\nbogus-command\n")
    request = UnattendedRequest(script_file=str(tmp_path / "bad.ks"))
    with pytest.raises(InvalidInput, match="Unknown command: bogus-command"):
        create_unattended(conn, _spec(name, iso=str(media["iso"])), request)
    assert not vms.exists(conn, name)
    assert find_volume_by_path(conn, f"/var/lib/libvirt/images/{name}-install-vmlinuz") is None


def test_a_failed_install_is_reported_with_its_last_lines_and_undone(
    conn: Connection, cleanup: Cleanup, media: dict[str, Path], secrets_dir: Path
) -> None:
    # The cloud variant of the media has the installer but no installation tree (.treeinfo):
    # told it is Rocky 9, kvmgr boots it with a kickstart and its installer gives up.
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}fails"
    iso = media["cloud"].with_name(media["cloud"].stem + "-raw.iso")
    spec = _spec(name, iso=str(iso), os="rocky9", disks=[DiskRequest(size=GIB)], nics=[])
    request = UnattendedRequest(root_password_file=str(secrets_dir / "pw"))
    with pytest.raises(OperationFailed, match="installation media not found") as failed:
        create_unattended(conn, spec, request)
    assert "KVMGR-KS-FOUND /rhel.ks" in failed.value.message  # the installer's last lines
    assert PASSWORD not in failed.value.message
    # everything it made is gone: the VM, its disk, the installer kernel and initrd
    assert not vms.exists(conn, name)
    for volume in (f"{name}.qcow2", f"{name}-install-vmlinuz", f"{name}-install-initrd.img"):
        assert find_volume_by_path(conn, f"/var/lib/libvirt/images/{volume}") is None


@pytest.fixture(scope="module")
def isolated(conn: Connection) -> Iterator[str]:
    from .conftest import remove_network

    remove_network(conn, NET)
    networks.create_network(
        conn, NetworkSpec(NET, mode="isolated", subnet="10.240.41.0/24", bridge="kvt-inst0")
    )
    yield NET
    remove_network(conn, NET)


@pytest.fixture(scope="module")
def image(conn: Connection, media: dict[str, Path]) -> Iterator[str]:
    name = "t-instimg-demo-cloud"  # not under PREFIX: per-test purges must leave it
    purge_prefix(conn, PREFIX)  # overlays an interrupted run left keep the base in use
    with contextlib.suppress(NotFound):
        delete_image(conn, name)
    import_image(conn, str(media["cloud"]), os_id="linux2022", name=name)
    yield name
    purge_prefix(conn, PREFIX)
    delete_image(conn, name)


def test_cloud_image_vm_applies_its_seed(
    conn: Connection, cleanup: Cleanup, image: str, isolated: str, secrets_dir: Path
) -> None:
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}cloud"
    (secrets_dir / "net.yaml").write_text(
        "version: 2\nethernets:\n  lan:\n    addresses: [10.240.41.50/24]\n    dhcp4: false\n"
    )
    assert image in [i.name for i in list_images(conn)]
    request = CloudInitRequest(
        user="alice",
        ssh_keys=[KEY],
        hostname="seeded-host",
        network_config_file=str(secrets_dir / "net.yaml"),
    )
    spec = _spec(name, disks=[DiskRequest(size=2 * GIB)], nics=[NicRequest(source=isolated)])
    # (not --wait ready: that also waits for a DHCP lease, and this address is static)
    result = create_from_image(conn, spec, image, request)
    # network-config matches the NIC by the MAC kvmgr gave it, never by a guessed name
    lan = yaml.safe_load(result.network_config)["ethernets"]["lan"]
    assert lan["match"] == {"macaddress": result.macs[0]} and lan["set-name"] == "lan"
    overlay = find_volume_by_path(conn, result.vm.volumes[0])
    assert overlay is not None and overlay.info()[1] == 2 * GIB
    assert get_image(conn, image).path in overlay.XMLDesc(0)  # a linked overlay of the base
    with GuestShell.open(conn, name) as shell:
        shell.wait_ready()
        assert shell.run("hostname").strip() == "seeded-host"
        assert shell.run("cat /home/alice/.ssh/authorized_keys").strip() == KEY
        assert STATIC_IP in shell.run("ip -4 addr show dev lan")
        shell.run("mkdir -p /run/www && echo KVMGR-ANSWER > /run/www/index.html")
        shell.run("httpd -p 8080 -h /run/www")
    # the host (the daemon's network namespace, where the isolated bridge lives) reaches the
    # guest at the static address network-config gave it
    probe = (
        "import socket, sys\n"
        f"s = socket.create_connection(({STATIC_IP!r}, 8080), timeout=20)\n"
        "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
        "sys.stdout.write(s.makefile('rb').read().decode())\n"
    )
    fetched = subprocess.run(
        ["ip", "netns", "exec", DEFAULT_NETNS, sys.executable, "-c", probe],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert fetched.stdout.endswith("KVMGR-ANSWER\n"), (fetched.returncode, fetched.stderr)
    # the seed is the VM's; once it is gone the VM still starts (startupPolicy optional)
    seed = find_volume_by_path(conn, result.seed_volume)
    assert seed is not None
    dom = vms.lookup(conn, name)
    dom.destroy()
    seed.delete(0)
    dom.create()
    assert dom.isActive()
    removed = vms.delete(conn, name, force=True)
    assert result.vm.volumes[0] in removed


def test_cloud_image_is_protected_while_a_vm_uses_it(
    conn: Connection, cleanup: Cleanup, image: str
) -> None:
    cleanup.prefix(PREFIX)
    name = f"{PREFIX}base-user"
    create_from_image(conn, _spec(name, start=False, nics=[]), image, None)
    with pytest.raises(InvalidInput, match="is the base of"):
        delete_image(conn, image)
    vms.delete(conn, name)
