"""Hole 5 of the trust issue: KVMGR_SECRET_KEY does what it says, and a TLS proxy in front does not
make every client one address.

- Console tokens are signed with the secret key: a token issued by one API replica opens the
  console on another that shares the key, and on no server with another key; a changed byte,
  an expired or a replayed token is refused.
- Behind a proxy named by ``--trusted-proxy`` the login limiter counts real clients (from
  X-Forwarded-For), so one client's bad logins lock out that client, not everyone; without it
  a forged X-Forwarded-For is ignored.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kvmgr.api.security import ConsoleTokens
from kvmgr.store.models import Role
from kvmgr.store.users import Principal

ALICE = Principal(7, "alice", Role.operator, "team-a")
KEY = "s" * 40


def test_a_token_of_one_replica_is_good_on_another_with_the_same_key() -> None:
    issuer, other = ConsoleTokens(30, KEY), ConsoleTokens(30, KEY)
    token = issuer.issue(ALICE, "vm-a", "serial")
    assert other.redeem(token, "vm-a", "serial") == ALICE


def test_another_key_a_changed_byte_and_a_replay_are_refused() -> None:
    issuer = ConsoleTokens(30, KEY)
    token = issuer.issue(ALICE, "vm-a", "vnc")
    assert ConsoleTokens(30, "t" * 40).redeem(token, "vm-a", "vnc") is None
    payload, _dot, signature = token.partition(".")
    forged = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + signature
    assert issuer.redeem(forged, "vm-a", "vnc") is None
    assert issuer.redeem(token, "vm-a", "vnc") == ALICE
    assert issuer.redeem(token, "vm-a", "vnc") is None  # single use


def test_expiry_uses_the_wall_clock_replicas_share() -> None:
    now = [1000.0]
    tokens = ConsoleTokens(30, KEY, clock=lambda: now[0])
    token = tokens.issue(ALICE, "vm-a", "serial")
    now[0] += 31
    assert tokens.redeem(token, "vm-a", "serial") is None


def test_a_bad_trusted_proxy_is_refused_before_serving(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvmgr.cli.main", "serve", "--trusted-proxy", "10.0.0.300"],
        env={**os.environ, "KVMGR_STATE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "10.0.0.300" in done.stderr and "Traceback" not in done.stderr


def _serve(state: Path, *extra: str) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "KVMGR_STATE_DIR": str(state),
        "KVMGR_URI": "test:///default",
        "KVMGR_EVENTS": "false",
        "KVMGR_STATS_INTERVAL": "0",
        "KVMGR_LOGIN_ATTEMPTS": "3",
        "KVMGR_LOGIN_ADDRESS_ATTEMPTS": "5",
    }
    subprocess.run(
        [sys.executable, "-m", "kvmgr.cli.main", "user", "create", "ann", "--role", "admin"],
        env={**env, "KVMGR_PASSWORD": "correct horse battery"},
        input="correct horse battery\ncorrect horse battery\n",
        capture_output=True,
        text=True,
        check=True,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "kvmgr.cli.main", "serve", "--listen", f"127.0.0.1:{port}", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/api/v1/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "serve died"
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def _login(base: str, password: str, client: str) -> int:
    answer = httpx.post(
        f"{base}/api/v1/auth/login",
        json={"name": "ann", "password": password},
        headers={"X-Forwarded-For": client},
    )
    return answer.status_code


@pytest.fixture
def behind_proxy(tmp_path: Path) -> Iterator[str]:
    yield from _serve(tmp_path, "--trusted-proxy", "127.0.0.1")


@pytest.fixture
def no_proxy(tmp_path: Path) -> Iterator[str]:
    yield from _serve(tmp_path)


def test_behind_a_trusted_proxy_one_client_locks_out_only_itself(behind_proxy: str) -> None:
    for _ in range(6):
        _login(behind_proxy, "wrong password!", "203.0.113.9")
    assert _login(behind_proxy, "correct horse battery", "203.0.113.9") == 429
    assert _login(behind_proxy, "correct horse battery", "198.51.100.4") == 200


def test_without_a_trusted_proxy_a_forged_header_changes_nothing(no_proxy: str) -> None:
    for number in range(6):
        _login(no_proxy, "wrong password!", f"203.0.113.{number}")  # a new "client" each time
    assert _login(no_proxy, "correct horse battery", "198.51.100.4") == 429
