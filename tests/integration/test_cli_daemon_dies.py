"""No CLI command ends in a traceback when the daemon dies in the middle of it.

A proxy in front of the real libvirtd forwards each command's RPC messages and cuts the
connection right after the n-th one, for every n the command sends: to kvmgr that is a daemon
that died while answering.  Every command of the CLI tree is run this way (those that change
this machine excepted, see tests/sweep/cli_tree.py), read commands against a real VM.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmgr.connect import Connection
from kvmgr.store.db import Store
from tests.integration.conftest import purge_prefix, remove_vm
from tests.sweep.cli_tree import NOT_RUN, Command, all_commands
from tests.sweep.proxy import CuttingProxy, cut_points, cutting_proxy, small_domain_xml
from tests.sweep.test_cli_sweep import check_clean, invoke

VM = "t-sweep-cut"
#: Commands that read a VM get a real one, so the cut lands in the middle of real work.
READS_A_VM = {"vm info", "vm state", "vm xml", "vm ip", "vm stats", "snap list"}
MAX_CUTS = 6  # most commands send a few messages; longer ones are cut at spread points
SYSTEM_SOCKET = "/run/libvirt/libvirt-sock"
MADE_PREFIX = "sweep-missing-"  # what the sweep names the objects it asks for (cli_tree)
#: Options added to a command so its whole run is its real work, not a long identical wait.
#: 'vm create sweep-missing-name' made a real VM and 'vm start' started it, but it has no OS to
#: answer ACPI: 'vm shutdown' waited out its default 120 s, polling the same state (and its cut
#: runs each waited until their cut: 540 s for this one command).  With 3 s it still sends the
#: shutdown request and polls, so the cuts still land in the middle of both.
EXTRA_OPTIONS = {"vm shutdown": ("--timeout", "3")}

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def sweep_vm(conn: Connection) -> Iterator[str]:
    remove_vm(conn, VM)
    conn.virconn.defineXML(small_domain_xml(VM))
    yield VM
    remove_vm(conn, VM)
    # Each command first runs whole, uncut: 'vm create sweep-missing-name' makes a real VM (and
    # 'vm rename' renames it), 'vol create' a volume; each test's store (and journal) is its own
    # tmp dir, so nothing would recover them.
    purge_prefix(conn, MADE_PREFIX)


@pytest.fixture(scope="module")
def empty_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir whose database is made and migrated once; each test gets a copy of it (its
    own store and journal, as before, without migrating a new database 104 times)."""
    template = tmp_path_factory.mktemp("sweep-cut-state")
    Store(f"sqlite:///{template / 'db' / 'kvmgr.db'}").dispose()  # where the CLI looks for it
    return template


@pytest.fixture
def proxy(
    tmp_path: Path, libvirt_uri: str, monkeypatch: pytest.MonkeyPatch, empty_state: Path
) -> Iterator[CuttingProxy]:
    state_dir = shutil.copytree(empty_state, tmp_path / "state")
    monkeypatch.setenv("KVMGR_STATE_DIR", str(state_dir))
    monkeypatch.delenv("KVMGR_DB_URL", raising=False)
    monkeypatch.setenv("KVMGR_PASSWORD", "sweep password 1")
    with cutting_proxy(tmp_path, SYSTEM_SOCKET) as running:
        yield running


def _argv(command: Command, vm: str) -> list[str]:
    extra = EXTRA_OPTIONS.get(command.name, ())
    if command.name in READS_A_VM:
        return [*command.path, vm, *command.arguments[1:], *extra]
    return [*command.argv(), *extra]


@pytest.mark.parametrize(
    "command", [c for c in all_commands() if c.name not in NOT_RUN], ids=lambda c: c.name
)
def test_daemon_dies_mid_command(command: Command, proxy: CuttingProxy, sweep_vm: str) -> None:
    argv = ["-c", proxy.uri, *_argv(command, sweep_vm)]
    proxy.cut_after = None
    invoke(*argv)  # counts the messages the whole command sends
    for cut in cut_points(proxy.messages, MAX_CUTS):
        proxy.cut_after = cut
        check_clean(argv)
