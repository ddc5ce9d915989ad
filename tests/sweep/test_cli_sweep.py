"""No CLI command ends in a traceback: every command, against objects that do not exist, with a
malformed argument, and against a daemon that cannot be reached.

Commands are found by walking the command tree, so a command added later is swept too.  They run
in-process (CliRunner): an exception that escapes a command is a failure here, whatever it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmgr.cli.common import state
from kvmgr.cli.main import app
from tests.sweep.cli_tree import NOT_RUN, Command, all_commands

COMMANDS = [command for command in all_commands() if command.name not in NOT_RUN]
#: A libvirt URI whose daemon is not there (a socket path that does not exist).
DEAD_URI = "qemu+unix:///system?socket=/nonexistent/kvmgr-sweep/libvirt-sock"


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sweep-state")  # one store for the module: made once


@pytest.fixture(autouse=True)
def private_state(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KVMGR_STATE_DIR", str(state_dir))
    monkeypatch.delenv("KVMGR_DB_URL", raising=False)
    monkeypatch.setenv("KVMGR_PASSWORD", "sweep password 1")
    yield
    state.close()


def invoke(*argv: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, list(argv), input="", catch_exceptions=True)
    state.close()
    state.uri = None
    exception = result.exception
    if isinstance(exception, SystemExit):
        exception = None
    return result.exit_code, result.output, exception


def check_clean(argv: list[str]) -> None:
    _code, output, exception = invoke(*argv)
    assert exception is None, f"kvmgr {' '.join(argv)} raised {exception!r}\n{output}"
    assert "Traceback" not in output, f"kvmgr {' '.join(argv)}:\n{output}"


pytestmark = pytest.mark.timeout(60)  # a command that waits forever fails instead of hanging


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_missing_objects(command: Command) -> None:
    check_clean(["-c", "test:///default", *command.argv()])


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_unreachable_daemon(command: Command) -> None:
    check_clean(["-c", DEAD_URI, *command.argv()])


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_malformed_arguments(command: Command) -> None:
    # No NUL: exec() cannot pass one in argv (the API sweep sends \u0000 in bodies instead).
    bad = [*command.path, *("../../etc/pass wd\n;$(id)*" for _ in command.arguments)]
    check_clean(["-c", "test:///default", *bad])


def test_every_command_is_swept_or_excused() -> None:
    assert len(COMMANDS) > 60
    excused = {command.name for command in all_commands()} - {c.name for c in COMMANDS}
    assert excused <= set(NOT_RUN)
