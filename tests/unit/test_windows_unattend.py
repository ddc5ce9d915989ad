"""Windows autounattend files from osinfo-db's templates, for every Windows it has one for.

There is no pykickstart for unattend files: the checks are that the XML is well-formed in the
unattend namespace, has the passes and settings an unattended install needs (check_unattend),
and carries exactly the user, computer name, time zone and product key asked for, with
passwords only in Windows' obscured form (PlainText false) and never in clear.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from lxml import etree

from kvmgr.errors import InvalidInput, Unsupported
from kvmgr.osinfo.db import get_db
from kvmgr.services.unattended import UnattendedRequest, load
from kvmgr.services.windows_install import windows_settings
from kvmgr.services.windows_unattend import (
    NS,
    UNATTEND_FILENAME,
    UNATTEND_LABEL,
    check_unattend,
    computer_name,
    obscure,
    plan_windows,
    read_iso_file,
    unattend_iso,
    unattend_scripts,
    windows_timezone,
)

PASSWORD = "Winter-2026!pw"
ADMIN = "Adm1n-secret-pw"
KEY = "VK7JG-NPHTM-C97JM-9MPGT-3V66T"
WINDOWS = sorted(
    entry.short_id
    for entry in get_db()
    if entry.family == "winnt" and unattend_scripts(entry, None)
)
Q = {"u": NS}


def test_the_windows_releases_with_autounattend_templates() -> None:
    # Vista/2008 onwards; XP, 2000 and 2003 have winnt.sif scripts, which kvmgr refuses.
    assert {"win10", "win11", "win2k19", "win2k22", "win2k16", "win7"} <= set(WINDOWS)
    assert "winxp" not in WINDOWS and "win2k3" not in WINDOWS


@pytest.fixture
def request_files(tmp_path: Path) -> UnattendedRequest:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    (tmp_path / "admin").write_text(ADMIN + "\n")
    return UnattendedRequest(
        user="alice",
        password_file=str(tmp_path / "pw"),
        root_password_file=str(tmp_path / "admin"),
        hostname="WIN-BUILD-01",
        timezone="Europe/Berlin",
        locale="de_DE",
    )


def _values(root: etree._Element, path: str) -> list[str]:
    return [node.text or "" for node in root.iterfind(path, Q)]


@pytest.mark.parametrize("profile", ["minimal", "desktop"])
@pytest.mark.parametrize("short_id", WINDOWS)
def test_each_windows_gets_its_answer_file(
    short_id: str, profile: str, request_files: UnattendedRequest
) -> None:
    request_files.profile = profile
    request_files.product_key = KEY.lower() if profile == "desktop" else None
    settings = windows_settings(load(request_files, "vm1"))
    made = plan_windows(get_db().get(short_id), None, settings)  # type: ignore[arg-type]
    wanted = "desktop" if profile == "desktop" else "jeos"
    assert made.source == f"osinfo-db http://microsoft.com/windows/unattend/{wanted}"
    root = check_unattend(made.text)
    shell = ".//u:component[@name='Microsoft-Windows-Shell-Setup']"
    assert _values(root, f"{shell}/u:UserAccounts/u:LocalAccounts/u:LocalAccount/u:Name") == [
        "alice"
    ]
    assert _values(root, f"{shell}/u:AutoLogon/u:Username") == ["alice"]
    assert _values(root, f".//u:settings[@pass='specialize']{shell}/u:ComputerName") == [
        "WIN-BUILD-01"
    ]
    assert _values(root, f"{shell}/u:TimeZone") == ["W. Europe Standard Time"]
    assert "DE-DE" in _values(root, ".//u:SystemLocale")
    keys = _values(root, ".//u:ProductKey") + _values(root, ".//u:ProductKey/u:Key")
    if profile == "desktop":
        assert KEY in keys  # given in lower case: upper-cased, as Windows spells it
    else:
        assert not keys and KEY not in made.text
    # passwords: obscured (PlainText false), never in clear, and decoding to what was given
    assert PASSWORD not in made.text and ADMIN not in made.text
    assert set(_values(root, ".//u:PlainText")) == {"false"}
    admin = _values(root, ".//u:AdministratorPassword/u:Value")
    assert admin == [obscure(ADMIN, "AdministratorPassword")]
    users = _values(root, ".//u:LocalAccount/u:Password/u:Value")
    assert base64.b64decode(users[0]).decode("utf-16-le") == PASSWORD + "Password"
    # the install ends with a power-off (how kvmgr sees Setup finish), in both profiles
    assert "shutdown /s /t 0" in made.text
    if profile == "desktop":
        assert "windows.cmd" in made.files and PASSWORD not in made.files["windows.cmd"]


def test_computer_name_time_zone_and_key_are_checked(request_files: UnattendedRequest) -> None:
    with pytest.raises(InvalidInput, match=r"at most 15 .*NetBIOS"):
        computer_name("a-sixteen-chars1")
    with pytest.raises(InvalidInput, match="not a Windows computer name"):
        computer_name("12345")
    assert computer_name("WIN-15-CHARS-OK") == "WIN-15-CHARS-OK"
    assert windows_timezone("UTC") == "UTC"
    assert windows_timezone("America/New_York") == "Eastern Standard Time"
    assert windows_timezone("Tokyo Standard Time") == "Tokyo Standard Time"
    with pytest.raises(InvalidInput, match="no Windows name"):
        windows_timezone("Antarctica/Troll")
    request_files.product_key = "not-a-key"
    with pytest.raises(InvalidInput, match="product key"):
        load(request_files, "vm1")
    request_files.product_key = None
    request_files.hostname = None  # the VM's name then, which Windows may not take
    with pytest.raises(InvalidInput, match="NetBIOS"):
        windows_settings(load(request_files, "a-vm-name-too-long-for-windows"))
    request_files.locale = "xx_YY"
    with pytest.raises(InvalidInput, match="Windows language"):
        windows_settings(load(request_files, "vm1"))


def test_windows_needs_a_user_and_a_password_not_its_hash(
    request_files: UnattendedRequest,
) -> None:
    request_files.user, request_files.password_file = None, None
    with pytest.raises(InvalidInput, match="needs --user"):
        windows_settings(load(request_files, "vm1"))
    # The API's requests hold only SHA-512 hashes: Windows cannot use those.
    hashed = UnattendedRequest(user="bob", password_hash="$6$salt$" + "a" * 86)
    with pytest.raises(Unsupported, match="password itself"):
        windows_settings(load(hashed, "vm1"))
    # no password at all: the obscured empty password, still not plain text
    settings = windows_settings(load(UnattendedRequest(user="bob"), "vm1"))
    made = plan_windows(get_db().get("win11"), None, settings)  # type: ignore[arg-type]
    assert obscure("", "Password") in made.text and "<PlainText>true" not in made.text


def test_check_unattend_refuses_what_setup_could_not_use() -> None:
    with pytest.raises(InvalidInput, match="not well-formed"):
        check_unattend("<unattend")
    with pytest.raises(InvalidInput, match="root"):
        check_unattend("<unattend/>")
    with pytest.raises(InvalidInput, match="no oobeSystem, specialize, windowsPE pass"):
        check_unattend(f'<unattend xmlns="{NS}"/>')


def test_the_cd_holds_the_files_under_their_joliet_names(
    request_files: UnattendedRequest,
) -> None:
    settings = windows_settings(load(request_files, "vm1"))
    made = plan_windows(get_db().get("win2k22"), None, settings)  # type: ignore[arg-type]
    image = unattend_iso(made.files)
    assert read_iso_file(image, UNATTEND_FILENAME).decode() == made.text
    assert image[16 * 2048 + 40 : 16 * 2048 + 72].decode().strip() == UNATTEND_LABEL
