"""Console pieces that need no running guest."""

from __future__ import annotations

import pytest

from kvmgr.connect import open_connection
from kvmgr.errors import InvalidInput, InvalidState
from kvmgr.services.console import ConsoleSession, escape_byte


@pytest.mark.parametrize(("key", "code"), [("^]", 0x1D), ("^O", 0x0F), ("^o", 0x0F), ("~", 0x7E)])
def test_escape_keys(key: str, code: int) -> None:
    assert escape_byte(key) == code


@pytest.mark.parametrize("key", ["", "ctrl-]", "^1x"])
def test_bad_escape_key_says_what_to_use(key: str) -> None:
    with pytest.raises(InvalidInput, match="escape key"):
        escape_byte(key)


def test_console_of_a_stopped_vm_is_refused_with_a_hint() -> None:
    with open_connection("test:///default") as conn:
        conn.virconn.lookupByName("test").destroy()
        with pytest.raises(InvalidState) as err:
            ConsoleSession(conn, "test")
    assert "kvmgr vm start test" in (err.value.hint or "")


def test_console_name_is_validated() -> None:
    with open_connection("test:///default") as conn, pytest.raises(InvalidInput):
        ConsoleSession(conn, "../etc")
