"""Fixtures every test gets: kvmgr's state (its database) in a throw-away directory.

The CLI opens the store under ``KVMGR_STATE_DIR`` for its leases and journal, in-process
(CliRunner) and in subprocesses alike; without this a test run would write into the real state
dir of the machine (/var/lib/kvmgr as root).  Session-wide, so session fixtures that run the CLI
get it too; a test may still point it elsewhere.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testdriver import reset_default_test_driver


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile kvmgr once, as an installation does.  With PYTHONDONTWRITEBYTECODE=1 (set
    on these machines) every ``kvmgr`` subprocess a test runs compiled each module it imported
    again: ~0.2 s of CPU of its ~1.1 s start (measured).  compileall writes only stale files."""
    import compileall

    import kvmgr

    compileall.compile_dir(Path(kvmgr.__file__).parent, quiet=2)
    # A run started in the background by a non-interactive shell (`pytest ... &`, nohup) has
    # SIGINT ignored, and every kvmgr it starts inherits that, so tests that press Ctrl-C on a
    # command (vm vnc, vm migrate) saw it ignored.  Python's own handler is not inherited
    # across exec: the children get the default again.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    state = tmp_path_factory.mktemp("kvmgr-state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KVMGR_STATE_DIR", str(state))
        # Not KVMGR_DB_URL: tests that pass their own state_dir expect the database inside it.
        patch.delenv("KVMGR_DB_URL", raising=False)
        yield


@pytest.fixture(scope="module", autouse=True)
def fresh_test_driver() -> Iterator[None]:
    """Put libvirt's shared ``test:///default`` back as it starts, after every test module.

    Every connection to test:///default in one process shares one driver, so a module that
    stops its VM 'test' or leaves a VM, network or pool behind changed what later modules saw
    (the suite passed file by file and failed as a whole).
    """
    yield
    reset_default_test_driver()
