"""Recovery on the real daemon: a process journals the undo of a real volume, makes the volume,
and is killed with SIGKILL; the next kvmgr process (the CLI's ``ops recover``) deletes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from kvmgr.connect import Connection
from kvmgr.services import storage_pools
from tests.integration.conftest import Cleanup

ROOT = Path(__file__).resolve().parents[2]
POOL, VOLUME = "t-core-recovery", "t-core-victim.qcow2"

VICTIM = """
import sys, time
import tests.integration.core_actions
from kvmgr.api.settings import Settings
from kvmgr.connect import open_connection
from kvmgr.control.plane import ControlPlane
from kvmgr.services import storage
from kvmgr.store.db import Store

pool, volume = sys.argv[1:3]
conn = open_connection("qemu:///system")
plane = ControlPlane(Store(Settings().database_url), "cli:victim", lambda _host: conn)
key = "vm-name:local/t-core-victim"
with plane.operation("create", "t-core-victim", "local", keys=[key]) as steps:
    steps.undo_with("test.core.volume.delete", pool=pool, name=volume)
    storage.create_pool_volume(conn, pool, volume, "16M")
    print("made", flush=True)
    time.sleep(600)
"""

CLI = """
import sys
import tests.integration.core_actions
from kvmgr.cli.main import run
sys.argv = ["kvmgr", *sys.argv[1:]]
run()
"""


def _python(code: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**env, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = _python(CLI, *args, env=env)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def test_undo_of_a_killed_process_is_run_by_the_next(
    conn: Connection, cleanup: Cleanup, tmp_path: Path
) -> None:
    env = {**os.environ, "KVMGR_STATE_DIR": str(tmp_path / "state")}
    env.pop("KVMGR_DB_URL", None)
    pool_dir = tmp_path / "pool"
    cleanup.pool(POOL)
    storage_pools.create_pool(conn, POOL, str(pool_dir))
    cleanup.volume(POOL, VOLUME)

    victim = _python(VICTIM, POOL, VOLUME, env=env)
    try:
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == "made", victim.stderr.read()  # type: ignore[union-attr]
        assert (pool_dir / VOLUME).exists()
        code, out, err = _cli("ops", "list", "-o", "json", env=env)
        assert code == 0, err
        [running] = json.loads(out)
        assert (running["state"], running["actor"]) == ("running", "cli:victim")
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    assert (pool_dir / VOLUME).exists()  # SIGKILL undid nothing

    code, out, err = _cli("ops", "recover", env=env)
    assert code == 0, err
    assert "undone: create t-core-victim on local" in out
    assert "test.core.volume.delete" in out
    assert not (pool_dir / VOLUME).exists()
    code, out, _err = _cli("ops", "list", "-o", "json", env=env)
    [undone] = json.loads(out)
    assert undone["state"] == "undone" and undone["finished"]
    code, out, _err = _cli("ops", "recover", env=env)
    assert (code, out.strip()) == (0, "nothing to recover")
