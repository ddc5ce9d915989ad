"""A second console session is refused unless it asks to take over (issue 16 item 7), on the
real daemon: the second ``vm console`` says so; with force the first session ends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvmgr.connect import Connection
from kvmgr.errors import InvalidState
from kvmgr.services.console import ConsoleBusy, ConsoleSession
from tests.integration.conftest import Cleanup
from tests.integration.guest import demo_domain

PREFIX = "t-contake-"


def test_second_session_is_refused_then_takes_over(
    conn: Connection, demo_iso: Path, cleanup: Cleanup
) -> None:
    cleanup.prefix(PREFIX)
    dom = conn.virconn.defineXML(demo_domain(conn, f"{PREFIX}vm", str(demo_iso)).to_xml())
    dom.create()
    first = ConsoleSession(conn, dom.name(), force=False)
    try:
        with pytest.raises(ConsoleBusy) as refused:
            ConsoleSession(conn, dom.name(), force=False)
        assert refused.value.hint and "--force" in refused.value.hint
        second = ConsoleSession(conn, dom.name(), force=True)
        try:
            deadline = time.monotonic() + 10
            with pytest.raises(InvalidState):  # the first session was disconnected
                while time.monotonic() < deadline:
                    first.read(0.2)
        finally:
            second.close()
    finally:
        first.close()
