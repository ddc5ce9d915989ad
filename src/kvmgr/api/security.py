"""Short-lived console tokens and the login rate limit.

Console tokens are signed with ``KVMGR_SECRET_KEY`` (HMAC-SHA256), so any API replica that shares
the key accepts a token another replica issued: the browser's websocket may land on either
behind a load balancer.  The login limiter lives in memory: a one-minute window wants no more.
"""

from __future__ import annotations

import base64
import collections
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvmgr.store.models import Role
from kvmgr.store.users import Principal


@dataclass(frozen=True)
class ConsoleGrant:
    user: Principal
    vm: str
    kind: str  # serial | vnc
    expires: float  # Unix time: replicas share the wall clock, not a monotonic one


class ConsoleTokens:
    """Single-use tokens bound to one user, one VM and one console kind, signed by ``secret``.

    A token carries its grant (user, VM, kind, expiry, a random nonce) and its signature; no
    replica has to have issued it.  Single use is enforced per replica (the nonces it redeemed
    until they expire); a token lives ``lifetime`` seconds (30 by default), and the console
    route re-checks that its user may still act on the VM.
    """

    def __init__(
        self, lifetime: float, secret: str | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.lifetime = lifetime
        # No key given (a library caller, a unit test): tokens are good in this process only.
        self._key = (secret or secrets.token_hex(32)).encode()
        self._clock = clock
        self._lock = threading.Lock()
        self._used: dict[str, float] = {}  # nonce -> expiry

    def issue(self, user: Principal, vm: str, kind: str, host: str = "") -> str:
        grant = {
            "u": [user.id, user.name, user.role.value, user.group],
            "vm": vm,
            "h": host,  # VM names repeat across hosts: the token opens this host's only
            "k": kind,
            "exp": self._clock() + self.lifetime,
            "n": secrets.token_urlsafe(16),
        }
        payload = _b64(json.dumps(grant, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def redeem(self, token: str, vm: str, kind: str, host: str = "") -> Principal | None:
        """The user the token was issued to, if it is valid for this VM and kind; used up."""
        grant = self._verified(token)
        if grant is None:
            return None
        with self._lock:
            now = self._clock()
            for nonce in [n for n, expires in self._used.items() if expires < now]:
                del self._used[nonce]
            if grant.get("n") in self._used:
                return None
            self._used[str(grant.get("n"))] = float(grant["exp"])  # used up, even when it fails
        if float(grant["exp"]) < self._clock():
            return None
        if not (secrets.compare_digest(str(grant["vm"]), vm) and grant["k"] == kind):
            return None
        if str(grant.get("h", "")) != host:
            return None
        user_id, name, role, group = grant["u"]
        return Principal(int(user_id), str(name), Role(role), group)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.digest(self._key, payload.encode(), "sha256"))

    def _verified(self, token: str) -> dict[str, Any] | None:
        payload, dot, signature = token.partition(".")
        if not dot or not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            grant = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            return None
        keys = {"u", "vm", "k", "exp", "n"}
        return grant if isinstance(grant, dict) and keys <= grant.keys() else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LoginLimiter:
    """At most ``attempts`` failed logins per (user, address), and ``address_attempts`` per
    address whatever the user names, within ``window`` seconds.

    The per-address budget stops one host from spraying a common password over many user names;
    a successful login clears only its own (user, address) count, so an attacker holding one
    valid account cannot reset the address budget between sprays.

    Memory is bounded: keys whose failures have all left the window are pruned every
    ``_PRUNE_EVERY`` failures, and at most ``max_keys`` keys are tracked.  When more are live,
    per-user keys go first (oldest last failure first), so a spray of random names cannot push
    out the per-address counts that stop it.
    """

    _PRUNE_EVERY = 1024

    def __init__(
        self,
        attempts: int,
        window: float,
        address_attempts: int | None = None,
        *,
        max_keys: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempts = attempts
        self.address_attempts = address_attempts if address_attempts is not None else 4 * attempts
        self.window = window
        self.max_keys = max(max_keys, 2)
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], collections.deque[float]] = {}
        self._since_prune = 0

    def __len__(self) -> int:
        """How many (user, address) and address keys are tracked."""
        with self._lock:
            return len(self._failures)

    def retry_after(self, user: str, address: str) -> tuple[float, str]:
        """(seconds until the next attempt is allowed, what is limited); 0 when allowed now."""
        with self._lock:
            now = self._clock()
            for key, limit, what in (
                ((_ANY_USER, address), self.address_attempts, "from this address"),
                ((user, address), self.attempts, f"for {user!r}"),
            ):
                failures = self._recent(key, now)
                if len(failures) >= limit:
                    return max(failures[0] + self.window - now, 0.1), what
            return 0.0, ""

    def failed(self, user: str, address: str) -> None:
        with self._lock:
            now = self._clock()
            for key in ((user, address), (_ANY_USER, address)):
                failures = self._recent(key, now)
                if not failures:
                    self._failures[key] = failures
                failures.append(now)
            self._since_prune += 1
            if self._since_prune >= self._PRUNE_EVERY or len(self._failures) > self.max_keys:
                self._prune(now)

    def succeeded(self, user: str, address: str) -> None:
        with self._lock:
            self._failures.pop((user, address), None)

    def _recent(self, key: tuple[str, str], now: float) -> collections.deque[float]:
        """The failures of ``key`` inside the window; an empty key is dropped, not created."""
        failures = self._failures.get(key)
        if failures is None:
            return collections.deque()
        cutoff = now - self.window
        while failures and failures[0] < cutoff:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def _prune(self, now: float) -> None:
        """Drop expired keys; then, if still over ``max_keys``, evict down to 3/4 of it."""
        self._since_prune = 0
        cutoff = now - self.window
        for key in [key for key, f in self._failures.items() if not f or f[-1] < cutoff]:
            del self._failures[key]
        if len(self._failures) <= self.max_keys:
            return
        keep = self.max_keys * 3 // 4
        victims = sorted(self._failures, key=lambda k: (k[0] == _ANY_USER, self._failures[k][-1]))
        for key in victims[: len(self._failures) - keep]:
            del self._failures[key]


#: Key of the per-address count; no user name can equal it (names are validated).
_ANY_USER = "\x00any"


#: Query parameters that carry a secret: the console websocket's single-use ``token`` (see
#: routes/console.py), and the usual names, should a client put one in a URL.
_SECRET_QUERY = re.compile(
    r"([?&](?:token|access_token|ticket|secret|password|csrf_token)=)[^&\s\"'#]*", re.IGNORECASE
)
REDACTED = "[redacted]"


def redact_query(text: str) -> str:
    """``text`` with the value of every secret query parameter replaced by ``[redacted]``."""
    return _SECRET_QUERY.sub(r"\g<1>" + REDACTED, text)


class RedactSecretsFilter(logging.Filter):
    """Scrubs secret query parameters from a log record before any handler formats it.

    uvicorn logs the path with its query string: the access log as an argument of
    ``'%s - "%s %s HTTP/%s" %d'``, websocket handshakes on ``uvicorn.error``.  Both the message
    and its string arguments are rewritten; the record is always kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_query(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        elif isinstance(record.args, dict):
            record.args = {
                k: redact_query(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


#: The loggers uvicorn writes request paths to.
UVICORN_LOGGERS = ("uvicorn.access", "uvicorn.error")


def install_log_redaction() -> None:
    """Put a :class:`RedactSecretsFilter` on uvicorn's loggers (once; safe to call again).

    Logger filters survive uvicorn's ``dictConfig`` (it replaces handlers, not filters).
    """
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecretsFilter) for f in logger.filters):
            logger.addFilter(RedactSecretsFilter())
