"""Short-lived console tokens and the login rate limit.  Both live in memory: a restart ends them,
which is what a token that lives 30 seconds and a one-minute window want anyway."""

from __future__ import annotations

import collections
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from kvmgr.store.users import Principal


@dataclass(frozen=True)
class ConsoleGrant:
    user: Principal
    vm: str
    kind: str  # serial | vnc
    expires: float


class ConsoleTokens:
    """Random, single-use tokens bound to one user, one VM and one console kind."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._grants: dict[str, ConsoleGrant] = {}

    def issue(self, user: Principal, vm: str, kind: str) -> str:
        token = secrets.token_urlsafe(32)
        grant = ConsoleGrant(user, vm, kind, time.monotonic() + self.lifetime)
        with self._lock:
            self._drop_expired()
            self._grants[_key(token)] = grant
        return token

    def redeem(self, token: str, vm: str, kind: str) -> Principal | None:
        """The user the token was issued to, if it is valid for this VM and kind; used up."""
        with self._lock:
            grant = self._grants.pop(_key(token), None)  # single use, even when it fails
        if grant is None or grant.expires < time.monotonic():
            return None
        if not (secrets.compare_digest(grant.vm, vm) and grant.kind == kind):
            return None
        return grant.user

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for key in [key for key, grant in self._grants.items() if grant.expires < now]:
            del self._grants[key]


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LoginLimiter:
    """At most ``attempts`` failed logins per (user, address), and ``address_attempts`` per
    address whatever the user names, within ``window`` seconds.

    The per-address budget stops one host from spraying a common password over many user names;
    a successful login clears only its own (user, address) count, so an attacker holding one
    valid account cannot reset the address budget between sprays.
    """

    def __init__(self, attempts: int, window: float, address_attempts: int | None = None) -> None:
        self.attempts = attempts
        self.address_attempts = address_attempts if address_attempts is not None else 4 * attempts
        self.window = window
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], collections.deque[float]] = {}

    def retry_after(self, user: str, address: str) -> tuple[float, str]:
        """(seconds until the next attempt is allowed, what is limited); 0 when allowed now."""
        with self._lock:
            for key, limit, what in (
                ((_ANY_USER, address), self.address_attempts, "from this address"),
                ((user, address), self.attempts, f"for {user!r}"),
            ):
                failures = self._recent(key)
                if len(failures) >= limit:
                    return max(failures[0] + self.window - time.monotonic(), 0.1), what
            return 0.0, ""

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent((user, address)).append(now)
            self._recent((_ANY_USER, address)).append(now)

    def succeeded(self, user: str, address: str) -> None:
        with self._lock:
            self._failures.pop((user, address), None)

    def _recent(self, key: tuple[str, str]) -> collections.deque[float]:
        failures = self._failures.setdefault(key, collections.deque())
        cutoff = time.monotonic() - self.window
        while failures and failures[0] < cutoff:
            failures.popleft()
        return failures


#: Key of the per-address count; no user name can equal it (names are validated).
_ANY_USER = "\x00any"
