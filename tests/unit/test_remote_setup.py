"""The host set-up plan over ssh: facts read with POSIX sh, steps quoted, nothing of kvmgr there.

``ssh`` is replaced by a script that runs the remote command with ``sh -c`` on this machine, so
the plumbing (one word per command, sections, exit statuses) is exercised for real.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kvmgr.errors import HostError, InvalidInput
from kvmgr.host.remote_setup import SshTarget, remote_command, remote_facts, setup_over_ssh
from kvmgr.host.setup import Step, build_plan, gather_facts

FAKE_SSH = """#!/bin/sh
# kvmgr's fake ssh: log the argv, skip options up to "--" and the destination, run the command
echo "$@" >> "$FAKE_SSH_LOG"
while [ "$1" != "--" ]; do shift; done
shift
if [ "$1" = "root@unreachable" ]; then echo "ssh: connect to host: No route" >&2; exit 255; fi
shift
exec sh -c "$1"
"""


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "ssh"
    script.write_text(FAKE_SSH)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "ssh.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    return log


def test_targets() -> None:
    target = SshTarget.parse("ssh://root@10.0.0.5")
    assert target.libvirt_uri() == "qemu+ssh://root@10.0.0.5/system"
    assert SshTarget.parse("ssh://ops@n1:2222/").libvirt_uri() == "qemu+ssh://ops@n1:2222/system"
    assert SshTarget.parse("ssh://n1").user == "root"
    keyed = SshTarget.parse("ssh://root@n1?keyfile=/k/id&command=/k/ssh")
    assert keyed.libvirt_uri() == "qemu+ssh://root@n1/system?keyfile=/k/id&command=/k/ssh"
    assert keyed.ssh_argv("true")[0] == "/k/ssh" and "/k/id" in keyed.ssh_argv("true")
    bad_targets = ("qemu+ssh://root@n1/system", "ssh:///x", "ssh://n1/path", "ssh://n1:99999")
    for bad in (*bad_targets, "ssh://n1?socket=/x", "ssh://n1?keyfile="):
        with pytest.raises(InvalidInput):
            SshTarget.parse(bad)


def test_steps_are_quoted_and_get_sudo_unless_root() -> None:
    step = Step(
        "install", ("apt-get", "install", "-y", "a b"), {"DEBIAN_FRONTEND": "noninteractive"}
    )
    assert (
        remote_command(SshTarget("root", "n1"), step)
        == "env DEBIAN_FRONTEND=noninteractive apt-get install -y 'a b'"
    )
    assert remote_command(SshTarget("ops", "n1"), step).startswith("sudo -n env ")


def test_remote_facts_match_the_local_ones(fake_ssh: Path) -> None:
    """Read over 'ssh' from this very machine, the facts plan what a local setup plans."""
    target = SshTarget.parse("ssh://root@this-machine")
    remote = remote_facts(target)
    local = gather_facts()
    assert remote.os_release == local.os_release
    assert remote.installed == local.installed
    assert remote.systemd == local.systemd
    if remote.systemd:
        assert build_plan(remote) == build_plan(local)
    assert fake_ssh.read_text().count("-o BatchMode=yes -o ConnectTimeout=10 --") == 2


def test_dry_run_changes_nothing_and_ssh_failures_say_ssh(fake_ssh: Path) -> None:
    target = SshTarget.parse("ssh://root@this-machine")
    if remote_facts(target).systemd:
        plan, steps = setup_over_ssh(target, dry_run=True)
        assert steps == list(plan.steps)
    with pytest.raises(HostError, match="ssh to root@unreachable failed") as err:
        remote_facts(SshTarget.parse("ssh://root@unreachable"))
    assert "libvirtd" not in (err.value.hint or "")
