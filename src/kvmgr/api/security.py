"""Short-lived console tokens and the login rate limit.  Both live in memory: a restart ends them,
which is what a token that lives 30 seconds and a one-minute window want anyway."""

from __future__ import annotations

import collections
import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
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
