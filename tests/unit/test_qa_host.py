"""QA of ``kvmgr host bridge create`` input: refused before any plan is made or any command runs.

Only reads this host's links (``ip -j``); every call is a dry run or fails validation first.
"""

from __future__ import annotations

import shutil

import pytest

from kvmgr.errors import InvalidInput
from kvmgr.host.bridge import create_bridge

pytestmark = pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 is not installed")


def test_a_ping_target_that_is_no_address_is_refused_before_the_move() -> None:
    # it used to be checked only after the addresses had moved, and that InvalidInput was not
    # one of the errors that trigger the rollback: the bridge stayed half made
    with pytest.raises(InvalidInput, match="'bogus' is not an IP address"):
        create_bridge("tqabr0", "lo", dry_run=True, ping="bogus", backend="iproute2")


def test_loopback_is_refused_as_uplink() -> None:
    with pytest.raises(InvalidInput, match="loopback"):
        create_bridge("tqabr0", "lo", dry_run=True, backend="iproute2")
