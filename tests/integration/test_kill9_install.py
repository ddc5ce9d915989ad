"""kill -9 of ``kvmgr vm create --unattended`` at every journal record and while the installer
runs, on the real daemon: after ``kvmgr ops recover`` (another process) nothing of the VM is
left: no domain, no disk, no installer kernel, initrd or script.

The Rocky-like media of test_installs (its stand-in installer needs ~30 s under TCG), a 1 GiB
disk; the database is the session's SQLite file (tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.images.test_media import build_installer_iso
from kvmgr.services.steps import CRASH_ENV
from tests.steps_harness import libvirt_state

from .conftest import DEMO_ISO_CACHE, purge_prefix

PREFIX = "t-k9inst-"
VM = f"{PREFIX}vm"
KVMGR = [sys.executable, "-m", "kvmgr.cli.main", "-c", "qemu:///system"]


@pytest.fixture(scope="module")
def iso() -> Path:
    DEMO_ISO_CACHE.parent.mkdir(parents=True, exist_ok=True)
    return build_installer_iso(DEMO_ISO_CACHE.parent / "rocky-demo.iso")


def _command(iso: Path, secret: Path) -> list[str]:
    return [*KVMGR, "vm", "create", VM, "--iso", str(iso), "--unattended",
            "--root-password-file", str(secret), "--disk", "1G", "--memory", "384M",
            "--vcpus", "1", "--network", "none", "--graphics", "none",
            "--wait", "installed", "--wait-timeout", "240"]  # fmt: skip


def _env(crash: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(CRASH_ENV, None)
    if crash is not None:
        env[CRASH_ENV] = crash
    return env


def _recover() -> None:
    done = subprocess.run([*KVMGR, "ops", "recover"], capture_output=True, text=True,
                          timeout=300, check=False, env=_env(None))  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture
def secret(tmp_path: Path, conn: Connection) -> Path:
    purge_prefix(conn, PREFIX)
    path = tmp_path / "root.pw"
    path.write_text("k9-secret-pw\n")
    path.chmod(0o600)
    yield path
    purge_prefix(conn, PREFIX)


@pytest.mark.parametrize("crash", ["1", "2", "3", "4"])
def test_killed_at_a_record_leaves_nothing(
    conn: Connection, iso: Path, secret: Path, crash: str
) -> None:
    assert libvirt_state(conn, PREFIX) == {"domains": {}, "volumes": []}
    killed = subprocess.run(_command(iso, secret), capture_output=True, text=True, timeout=300,
                            check=False, env=_env(crash))  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    _recover()
    assert libvirt_state(conn, PREFIX) == {"domains": {}, "volumes": []}


def test_killed_while_the_installer_runs_leaves_nothing(
    conn: Connection, iso: Path, secret: Path
) -> None:
    cli = subprocess.Popen(_command(iso, secret), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=_env(None))  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not _installer_running(conn):
            assert cli.poll() is None, "the create ended before the installer ran"
            assert time.monotonic() < deadline, "the installer never started"
            time.sleep(0.2)
        time.sleep(3)  # inside the install, not at its first instruction
    finally:
        cli.kill()
        cli.wait(timeout=60)
    assert libvirt_state(conn, PREFIX)["domains"], "the kill came after the create undid itself"
    _recover()
    assert libvirt_state(conn, PREFIX) == {"domains": {}, "volumes": []}
    with pytest.raises(libvirt.libvirtError):
        conn.virconn.lookupByName(VM)


def _installer_running(conn: Connection) -> bool:
    try:
        dom = conn.virconn.lookupByName(VM)
        return bool(dom.isActive()) and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    except libvirt.libvirtError:
        return False
