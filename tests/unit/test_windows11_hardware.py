"""Windows 11 gets TPM 2.0, UEFI Secure Boot and SMM; Windows 10 none of it; a host that cannot
emulate a TPM is refused before anything is made, with the package to install."""

from __future__ import annotations

from collections.abc import Iterator

import libvirt
import pytest

from kvmgr.connect import Connection, open_connection
from kvmgr.errors import Unsupported
from kvmgr.osinfo import get_profile
from kvmgr.services import create as create_service
from kvmgr.services import vms
from kvmgr.services.create import DiskRequest, VMSpec, build_domain
from kvmgr.services.create_policy import check_firmware_caps
from kvmgr.units import GIB, MIB
from kvmgr.xml.capabilities import DomainCapabilities
from kvmgr.xml.domain import Domain

ISO = "/var/lib/kvmgr/isos/installer.iso"


@pytest.fixture
def conn() -> Iterator[Connection]:
    connection = open_connection("test:///default")
    yield connection
    connection.close()


def _definition(conn: Connection, os_id: str) -> Domain:
    spec = VMSpec(name=f"t-{os_id}", iso=ISO, memory=GIB, vcpus=1, disks=[])
    xml = build_domain(conn, spec, get_profile(os_id), "kvm", GIB, 1, ISO, [], []).to_xml()
    return Domain.from_xml(xml)  # read back: what libvirt would be given


def test_osinfo_db_marks_windows_11_alone_among_installed_windows() -> None:
    assert get_profile("win11").tpm_secure_boot
    assert not any(get_profile(os_id).tpm_secure_boot for os_id in ("win10", "win8.1", "win7"))
    assert not get_profile("rocky9").tpm_secure_boot


def test_windows_11_definition_has_tpm_secure_boot_and_smm(conn: Connection) -> None:
    domain = _definition(conn, "win11")
    assert domain.os.machine == "q35" and domain.os.firmware == "efi"
    assert [(f.name, f.enabled) for f in domain.os.firmware_features] == [
        ("secure-boot", True), ("enrolled-keys", True)
    ]  # fmt: skip
    assert domain.features.smm_state == "on"
    assert [(t.model, t.backend_type, t.backend_version) for t in domain.devices.tpms] == [
        ("tpm-crb", "emulator", "2.0")
    ]
    # firmware auto-selection: no host path of an OVMF build written into the definition
    assert domain.os.loader is None and domain.os.nvram is None


def test_windows_10_definition_is_unchanged_bios_without_tpm(conn: Connection) -> None:
    domain = _definition(conn, "win10")
    assert domain.os.firmware is None and not domain.os.firmware_features
    assert domain.features.smm_state is None and not domain.devices.tpms


# The parts of qemu:///system's domain capabilities the check reads (libvirt 9.0 on Debian 12,
# trimmed): with swtpm installed, and as libvirt reports a host without it.
_CAPS = """<domainCapabilities><path>/usr/bin/qemu-system-x86_64</path><domain>kvm</domain>
<machine>pc-q35-7.2</machine><arch>x86_64</arch>
<os supported='yes'><enum name='firmware'><value>efi</value></enum>
<loader supported='yes'><value>/usr/share/OVMF/OVMF_CODE_4M.secboot.fd</value>
<enum name='secure'>{secure}</enum></loader></os>
<devices>{tpm}</devices></domainCapabilities>"""
_TPM = """<tpm supported='yes'><enum name='model'><value>tpm-tis</value><value>tpm-crb</value>
</enum><enum name='backendModel'><value>passthrough</value>{emulator}</enum>
<enum name='backendVersion'><value>1.2</value><value>2.0</value></enum></tpm>"""


def _caps(*, swtpm: bool = True, secure: bool = True) -> DomainCapabilities:
    tpm = _TPM.format(emulator="<value>emulator</value>" if swtpm else "")
    secure_values = "<value>yes</value><value>no</value>" if secure else "<value>no</value>"
    return DomainCapabilities.from_xml(_CAPS.format(secure=secure_values, tpm=tpm))


def test_host_without_swtpm_is_refused_with_the_package_to_install() -> None:
    check_firmware_caps(_caps(), get_profile("win11"))  # the host as it is: accepted
    with pytest.raises(Unsupported, match=r"TPM 2\.0") as refused:
        check_firmware_caps(_caps(swtpm=False), get_profile("win11"))
    assert "swtpm swtpm-tools" in (refused.value.hint or "")
    with pytest.raises(Unsupported, match="Secure Boot") as refused:
        check_firmware_caps(_caps(secure=False), get_profile("win11"))
    assert "ovmf" in (refused.value.hint or "")
    # Windows 10 on a host without swtpm: its UEFI (if asked for) needs no TPM
    check_firmware_caps(_caps(swtpm=False), get_profile("win10"))


class _NoTpmCaps:
    """A qemu-like connection's stand-in: test:/// has no domain capabilities, so they are
    answered here as a host without swtpm would answer them."""

    def __init__(self, real: libvirt.virConnect) -> None:
        self._real = real

    def getDomainCapabilities(self, *_args: object) -> str:
        return _CAPS.format(secure="<value>yes</value>", tpm=_TPM.format(emulator=""))

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def test_create_refuses_before_any_volume_is_made(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmgr.connect.connection import DomainTypeChoice

    monkeypatch.setattr(conn, "virconn", _NoTpmCaps(conn.virconn))
    monkeypatch.setattr(conn, "domain_type", lambda: DomainTypeChoice("qemu", "test"))

    def no_volumes(*_args: object) -> None:
        raise AssertionError("a volume was made before the refusal")

    # volumes are the first thing a create makes; a refusal after them would be undone by the
    # journal and leave nothing either, so it is their making that must not happen
    monkeypatch.setattr(create_service, "_create_volumes", no_volumes)
    spec = VMSpec(name="t-win11-notpm", os="win11", memory=512 * MIB, vcpus=1,
                  disks=[DiskRequest(size=GIB)], nics=[], graphics="none", start=False)  # fmt: skip
    with pytest.raises(Unsupported, match=r"TPM 2\.0") as refused:
        create_service.create_vm(conn, spec)
    assert "apt install swtpm swtpm-tools" in (refused.value.hint or "")
    assert not vms.exists(conn, spec.name)


def test_windows_install_refuses_before_the_answer_file_volume_is_made(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Windows path uploads its answer-file CD before create_vm runs, so it checks first."""
    from kvmgr.connect.connection import DomainTypeChoice
    from kvmgr.osinfo.db import get_db
    from kvmgr.services import windows_install
    from kvmgr.services.steps import LocalSteps
    from kvmgr.services.unattended import Settings

    def no_upload(*_args: object) -> None:
        raise AssertionError("the answer-file volume was made before the refusal")

    monkeypatch.setattr(conn, "virconn", _NoTpmCaps(conn.virconn))
    monkeypatch.setattr(conn, "domain_type", lambda: DomainTypeChoice("qemu", "test"))
    monkeypatch.setattr(windows_install, "upload_bytes", no_upload)
    entry = get_db().get("win11")
    assert entry is not None
    settings = Settings(
        user="alice", user_hash=None, root_hash=None, ssh_keys=[], hostname="WIN11",
        timezone="UTC", locale="en_US", packages=[], profile="minimal", script_text=None,
    )  # fmt: skip
    spec = VMSpec(name="t-win11-cd", os="win11", disks=[DiskRequest(size=GIB)], nics=[])
    with pytest.raises(Unsupported, match=r"TPM 2\.0"):
        windows_install.create_windows(
            conn, spec, settings, ISO, entry, None, wait="started",
            steps=LocalSteps(conn), say=lambda _m: None,
        )  # fmt: skip
