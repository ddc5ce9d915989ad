"""Install scripts from osinfo-db's templates: valid for each release, secrets only hashed.

Kickstarts are parsed with pykickstart for the release they target, preseeds with
debconf-set-selections --checkonly, cloud-config with ``cloud-init schema`` (Debian's
cloud-init package), the same checks their installers make.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from kvmgr.crypt import sha512_crypt
from kvmgr.errors import InvalidInput, NotFound, Unsupported
from kvmgr.osinfo.db import get_db
from kvmgr.osinfo.install_scripts import all_scripts, scripts_for
from kvmgr.services.kickstart import RHEL_LIKE, pykickstart_version
from kvmgr.services.unattended import (
    UnattendedRequest,
    autoinstall_user_data,
    is_ubuntu_server,
    load,
    plan,
)

PASSWORD = "correct horse battery staple"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl al@h"


@pytest.fixture
def request_files(tmp_path: Path) -> UnattendedRequest:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    (tmp_path / "key.pub").write_text(KEY + "\n")
    return UnattendedRequest(
        user="alice",
        password_file=str(tmp_path / "pw"),
        root_password_file=str(tmp_path / "pw"),
        ssh_key_files=[str(tmp_path / "key.pub")],
        packages=["vim-enhanced", "@development"],
    )


def test_sha512_crypt_matches_glibc_vectors() -> None:
    # from Drepper's specification of SHA-crypt, as glibc and openssl passwd -6 compute it
    expected = (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEd"
        "FCoEOfaS35inz1"
    )
    assert sha512_crypt("Hello world!", "saltstring") == expected
    rounds = (
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp"
        "8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."
    )
    assert sha512_crypt("Hello world!", "saltstringsaltstring", rounds=10000) == rounds
    assert sha512_crypt("x") != sha512_crypt("x")  # a random salt each time


def _kickstart_oses() -> list[str]:
    db = get_db()
    return sorted(
        entry.short_id
        for entry in db
        if entry.distro in RHEL_LIKE and any(s.kind == "kickstart" for s in scripts_for(entry))
    )


def test_every_el_release_gets_a_kickstart_pykickstart_accepts(
    request_files: UnattendedRequest,
) -> None:
    settings = load(request_files, "vm1")
    db = get_db()
    checked: Counter[str] = Counter()
    for short_id in _kickstart_oses():
        entry = db.get(short_id)
        assert entry is not None
        for profile in ("minimal", "desktop"):
            settings.profile = profile
            made = plan(entry, None, settings)
            assert made.kind == "kickstart" and made.source.startswith("osinfo-db http://")
            assert made.release == pykickstart_version(entry)
            assert PASSWORD not in made.text and "KVMGR-" not in made.text
            assert settings.root_hash and settings.root_hash in made.text
            assert KEY in made.text and "vim-enhanced" in made.text
            assert "inst.ks=file:/rhel.ks" in made.cmdline or "ks=file:/rhel.ks" in made.cmdline
            checked[entry.distro or ""] += 1
    # the families osinfo-db ships and the count per family (both profiles)
    assert {"rhel", "centos", "rocky", "almalinux", "ol", "scientificlinux"} <= set(checked)
    assert sum(checked.values()) >= 200


def test_el7_and_older_get_ks_argument_and_keys_in_post(request_files: UnattendedRequest) -> None:
    settings = load(request_files, "vm1")
    made = plan(get_db().get("centos7.0"), None, settings)  # type: ignore[arg-type]
    assert made.cmdline.startswith("ks=file:/rhel.ks") and made.release == "RHEL7"
    assert "sshkey" not in made.text and "cat >> /home/alice/.ssh/authorized_keys" in made.text
    modern = plan(get_db().get("rocky9"), None, settings)  # type: ignore[arg-type]
    assert f'sshkey --username=alice "{KEY}"' in modern.text
    assert modern.cmdline.startswith("inst.ks=file:/rhel.ks")


def test_modern_fedora_kickstarts_are_valid_and_old_template_bugs_refused(
    request_files: UnattendedRequest,
) -> None:
    settings = load(request_files, "vm1")
    db = get_db()
    for version in range(20, 39):
        entry = db.get(f"fedora{version}")
        if entry is not None:
            assert plan(entry, None, settings).release == f"F{version}"
    # osinfo-db writes "zerombr yes" for Fedora 9-13, which their grammar refuses: kvmgr says so
    with pytest.raises(InvalidInput, match="not a valid F10 kickstart"):
        plan(db.get("fedora10"), None, settings)  # type: ignore[arg-type]


def test_a_users_kickstart_is_refused_with_the_parsers_message(
    tmp_path: Path, request_files: UnattendedRequest
) -> None:
    (tmp_path / "bad.ks").write_text("rootpw --iscrypted x\nfrobnicate --now\n")
    request_files.script_file = str(tmp_path / "bad.ks")
    settings = load(request_files, "vm1")
    with pytest.raises(InvalidInput, match="Unknown command: frobnicate") as err:
        plan(get_db().get("rocky9"), None, settings)  # type: ignore[arg-type]
    assert "RHEL9" in err.value.message
    (tmp_path / "good.ks").write_text("text\nrootpw --lock\n%packages\n@core\n%end\n")
    request_files.script_file = str(tmp_path / "good.ks")
    made = plan(get_db().get("rocky9"), None, load(request_files, "vm1"))  # type: ignore[arg-type]
    assert made.source == "user file" and made.text.startswith("text\n")


@pytest.mark.skipif(not shutil.which("debconf-set-selections"), reason="needs debconf")
def test_every_debian_preseed_is_valid_debconf(
    tmp_path: Path, request_files: UnattendedRequest
) -> None:
    settings = load(request_files, "vm1")
    db = get_db()
    checked = 0
    for entry in db:
        if entry.distro != "debian" or not any(s.kind == "preseed" for s in scripts_for(entry)):
            continue
        made = plan(entry, None, settings)
        assert PASSWORD not in made.text and "passwd/root-password-crypted" in made.text
        assert "d-i passwd/username string alice" in made.text
        path = tmp_path / f"{entry.short_id}.cfg"
        path.write_text(made.text)
        done = subprocess.run(
            ["debconf-set-selections", "--checkonly", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0 and not done.stderr, (entry.short_id, done.stderr)
        checked += 1
    assert checked >= 5


def _cloud_init_schema(tmp_path: Path, text: str) -> None:
    path = tmp_path / "user-data"
    path.write_text(text)
    done = subprocess.run(
        ["cloud-init", "schema", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not shutil.which("cloud-init"), reason="needs Debian's cloud-init")
def test_ubuntu_server_gets_a_kvmgr_autoinstall_that_is_valid_cloud_config(
    tmp_path: Path, request_files: UnattendedRequest
) -> None:
    db = get_db()
    entry = db.get("ubuntu22.04")
    assert entry is not None
    server = next(m for m in entry.media if not m.installer_script)
    assert is_ubuntu_server(entry, server) and scripts_for(entry, server) == []
    settings = load(request_files, "vm1")
    made = plan(entry, server, settings)
    assert (made.kind, made.injection, made.source) == (
        "autoinstall",
        "cidata",
        "kvmgr autoinstall",
    )
    assert PASSWORD not in made.text and "autoinstall" in made.cmdline
    _cloud_init_schema(tmp_path, made.text)
    settings.user = None
    with pytest.raises(InvalidInput, match="needs --user"):
        autoinstall_user_data(settings)


def test_windows_and_unknown_templates_are_refused_not_guessed(
    request_files: UnattendedRequest,
) -> None:
    settings = load(request_files, "vm1")
    with pytest.raises(Unsupported, match="autounattend CD"):  # windows_install's path
        plan(get_db().get("win10"), None, settings)  # type: ignore[arg-type]
    with pytest.raises(Unsupported, match="autoyast"):
        plan(get_db().get("opensuse15.4"), None, settings)  # type: ignore[arg-type]


def test_named_inputs_are_checked_before_anything(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="root password file"):
        load(UnattendedRequest(root_password_file=str(tmp_path / "nope")), "vm1")
    (tmp_path / "empty").write_text("")
    with pytest.raises(InvalidInput, match="is empty"):
        load(UnattendedRequest(root_password_file=str(tmp_path / "empty")), "vm1")
    (tmp_path / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n")
    with pytest.raises(InvalidInput, match="private key"):
        load(UnattendedRequest(ssh_key_files=[str(tmp_path / "id_ed25519")]), "vm1")
    (tmp_path / "junk.pub").write_text("ssh-ed25519 AAAA'; rm -rf / #\n")
    with pytest.raises(InvalidInput, match=r"junk\.pub:1 is not an OpenSSH public key"):
        load(UnattendedRequest(ssh_key_files=[str(tmp_path / "junk.pub")]), "vm1")
    with pytest.raises(NotFound, match="install script"):
        load(UnattendedRequest(script_file=str(tmp_path / "missing.ks")), "vm1")
    with pytest.raises(InvalidInput, match="needs --user"):
        load(UnattendedRequest(password_file=str(tmp_path / "empty")), "vm1")
    for bad in ({"user": "Root!"}, {"hostname": "a_b"}, {"timezone": "x;y"}, {"packages": ["a b"]}):
        with pytest.raises(InvalidInput):
            load(UnattendedRequest(**bad), "vm1")  # type: ignore[arg-type]


def test_all_osinfo_scripts_parse() -> None:
    scripts = all_scripts()
    kinds = Counter(script.kind for script in scripts.values())
    assert kinds["kickstart"] >= 4 and kinds["preseed"] >= 4
    assert all(script.expected_filename for script in scripts.values())
