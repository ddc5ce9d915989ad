"""swtpm's local CA: files its user does not own are found, reported by host check, given back
by host setup, and a failed TPM start says where to look."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import libvirt
import pytest

from kvmgr.errors import translate
from kvmgr.host import checks
from kvmgr.host.check_runner import CheckContext, Status
from kvmgr.host.osrelease import parse_os_release
from kvmgr.host.setup import SetupFacts, build_plan, execute
from kvmgr.host.swtpm_ca import foreign_ca_files, localca_statedir, swtpm_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")

#: A system user other than root to own "swtpm's" CA in these tests (nobody exists everywhere).
USER = "nobody"


def _confs(tmp_path: Path, user: str = USER) -> tuple[Path, Path, Path]:
    tmp_path.mkdir(exist_ok=True)
    statedir = tmp_path / "localca"
    statedir.mkdir(mode=0o750)
    qemu_conf = tmp_path / "qemu.conf"
    qemu_conf.write_text(f'# swtpm_user = "tss"\nswtpm_user = "{user}"\n')
    localca_conf = tmp_path / "swtpm-localca.conf"
    localca_conf.write_text(f"statedir = {statedir}\nsigningkey = {statedir}/signkey.pem\n")
    return statedir, qemu_conf, localca_conf


def _own(path: Path, user: str) -> None:
    os.chown(path, pwd.getpwnam(user).pw_uid, -1)


def test_the_settings_are_read_from_both_files_with_their_defaults(tmp_path: Path) -> None:
    statedir, qemu_conf, localca_conf = _confs(tmp_path)
    assert swtpm_user(qemu_conf) == USER
    assert localca_statedir(localca_conf) == statedir
    assert swtpm_user(tmp_path / "none.conf") == "tss"  # libvirt's default
    assert localca_statedir(tmp_path / "none.conf") == Path("/var/lib/swtpm-localca")


def test_root_files_in_the_ca_of_an_unprivileged_swtpm_are_found(tmp_path: Path) -> None:
    statedir, qemu_conf, localca_conf = _confs(tmp_path)
    _own(statedir, USER)
    (statedir / "certserial").write_text("3\n")
    _own(statedir / "certserial", USER)
    assert foreign_ca_files(qemu_conf, localca_conf) is None
    (statedir / ".lock.swtpm-localca").touch()  # as root, what a root-run swtpm leaves
    (statedir / "signkey.pem").touch()
    found = foreign_ca_files(qemu_conf, localca_conf)
    assert found is not None
    assert [path.name for path, _ in found.files] == [".lock.swtpm-localca", "signkey.pem"]
    assert {owner for _, owner in found.files} == {"root"}
    assert f"{statedir} has files {USER} does not own" in found.summary
    assert found.fix_argv == ("chown", "-R", USER, str(statedir))


def test_no_problem_without_the_ca_or_without_the_user(tmp_path: Path) -> None:
    statedir, qemu_conf, localca_conf = _confs(tmp_path, user="kvmgr-no-such-user")
    (statedir / "signkey.pem").touch()
    assert foreign_ca_files(qemu_conf, localca_conf) is None  # libvirt then runs swtpm as root
    statedir, qemu_conf, localca_conf = _confs(tmp_path / "b")
    statedir.rmdir()
    assert foreign_ca_files(qemu_conf, localca_conf) is None  # swtpm-tools not installed


def test_host_check_warns_with_the_fix_and_passes_once_fixed(tmp_path: Path) -> None:
    statedir, qemu_conf, localca_conf = _confs(tmp_path)
    (statedir / "signkey.pem").touch()
    ctx = CheckContext(qemu_conf=qemu_conf, swtpm_localca_conf=localca_conf)
    result = checks.check_swtpm_ca(ctx)
    assert result.status is Status.WARN
    assert "signkey.pem (root)" in result.detail
    assert "kvmgr host setup" in result.hint and f"chown -R {USER}" in result.hint
    subprocess.run(["chown", "-R", USER, str(statedir)], check=True)
    assert checks.check_swtpm_ca(ctx).status is Status.PASS
    assert checks.SWTPM_CA in {check.name for check in checks.CHECKS}


def test_host_setup_plans_the_chown_and_carries_it_out(tmp_path: Path) -> None:
    statedir, qemu_conf, localca_conf = _confs(tmp_path)
    (statedir / "issuercert.pem").touch()
    found = foreign_ca_files(qemu_conf, localca_conf)
    osr = parse_os_release('ID=debian\nVERSION_ID="12"\n')
    facts = SetupFacts(osr, frozenset(), systemd=False, daemon_answers=True, swtpm_ca=found)
    plan = build_plan(facts)
    profile_packages = [s for s in plan.steps if s.argv[0] == "apt-get"]
    (step,) = [s for s in plan.steps if s not in profile_packages]
    assert step.argv == ("chown", "-R", USER, str(statedir))
    assert "swtpm's local CA" in step.title
    execute(type(plan)(plan.distribution, plan.family, (step,)))
    assert foreign_ca_files(qemu_conf, localca_conf) is None
    assert (statedir.stat().st_mode & 0o777) == 0o750  # the package's mode is kept


def test_a_failed_swtpm_setup_says_where_to_look() -> None:
    err = libvirt.libvirtError("")
    err.err = (
        libvirt.VIR_ERR_INTERNAL_ERROR,
        0,
        "internal error: Could not run '/usr/bin/swtpm_setup'. exitstatus: 1; Check error log "
        "'/var/log/swtpm/libvirt/qemu/w11-swtpm.log' for details.",
        2,
        "",
        None,
        None,
        0,
        0,
    )
    translated = translate(err, "starting VM w11")
    assert "w11-swtpm.log" in translated.message
    assert "kvmgr host check" in translated.hint and "kvmgr host setup" in translated.hint
