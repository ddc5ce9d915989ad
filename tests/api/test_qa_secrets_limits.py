"""QA of issue 11, hole 5: the login limiter forgets expired keys and stays bounded under a
spray of user names, and console tokens never reach uvicorn's logs."""

from __future__ import annotations

import logging

import pytest

from kvmgr.api.security import (
    REDACTED,
    LoginLimiter,
    RedactSecretsFilter,
    install_log_redaction,
    redact_query,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limiter_drops_keys_whose_window_has_passed() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(3, 60.0, clock=clock)
    for i in range(100):
        limiter.failed(f"user{i}", "10.0.0.1")
    assert len(limiter) == 101  # 100 (user, address) keys and one address key
    clock.now += 61
    for i in range(LoginLimiter._PRUNE_EVERY):
        limiter.failed(f"later{i}", "10.0.0.2")
    assert len(limiter) <= LoginLimiter._PRUNE_EVERY + 1
    assert limiter.retry_after("user0", "10.0.0.1") == (0.0, "")


def test_checking_a_name_does_not_create_a_key() -> None:
    limiter = LoginLimiter(3, 60.0, clock=FakeClock())
    for i in range(1000):
        assert limiter.retry_after(f"nobody{i}", "10.0.0.1") == (0.0, "")
    assert len(limiter) == 0


def test_the_limiter_stays_bounded_under_100k_distinct_names() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(3, 60.0, max_keys=10_000, clock=clock)
    for i in range(100_000):
        limiter.failed(f"spray{i}", f"10.0.{i % 7}.1")
        clock.now += 0.0001  # all inside the window: nothing expires by itself
        assert len(limiter._failures) <= 10_000 + 1
    assert len(limiter) <= 10_000
    # The per-address counts survive eviction: the sprayer is still stopped.
    wait, what = limiter.retry_after("fresh-name", "10.0.3.1")
    assert wait > 0 and what == "from this address"


def test_the_limit_itself_is_unchanged() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(2, 60.0, clock=clock)
    limiter.failed("alice", "10.0.0.1")
    assert limiter.retry_after("alice", "10.0.0.1") == (0.0, "")
    limiter.failed("alice", "10.0.0.1")
    wait, what = limiter.retry_after("alice", "10.0.0.1")
    assert wait == pytest.approx(60.0) and "alice" in what
    clock.now += 30
    assert limiter.retry_after("alice", "10.0.0.1")[0] == pytest.approx(30.0)
    limiter.succeeded("alice", "10.0.0.1")
    assert limiter.retry_after("alice", "10.0.0.1") == (0.0, "")


def _access_record(path: str) -> logging.LogRecord:
    # What uvicorn's h11/httptools protocols log on "uvicorn.access".
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 101),
        None,
    )


def test_the_access_log_filter_redacts_a_console_token() -> None:
    secret = "s3cr3t-Tok_en"
    record = _access_record(f"/api/v1/vms/web1/console?token={secret}&x=1")
    assert RedactSecretsFilter().filter(record) is True
    line = record.getMessage()
    assert secret not in line
    assert f"/api/v1/vms/web1/console?token={REDACTED}&x=1" in line
    assert line.endswith(" 101")


def test_the_filter_keeps_other_query_parameters() -> None:
    assert redact_query("/api/v1/tasks?limit=5&owner=bob") == "/api/v1/tasks?limit=5&owner=bob"
    assert redact_query("/x?a=1&TOKEN=abc") == f"/x?a=1&TOKEN={REDACTED}"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_installed_filter_scrubs_access_and_websocket_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install_log_redaction()
    install_log_redaction()  # idempotent
    access = logging.getLogger("uvicorn.access")
    error = logging.getLogger("uvicorn.error")
    assert sum(isinstance(f, RedactSecretsFilter) for f in access.filters) == 1
    # Other tests run uvicorn's own logging set-up (levels, disabled loggers): this test reads
    # what each logger hands its own handler, whatever the global logging state.
    collect = _Collect()
    for logger in (access, error):
        monkeypatch.setattr(logger, "disabled", False)
        monkeypatch.setattr(logger, "handlers", [collect])
        monkeypatch.setattr(logger, "propagate", False)
    access.handle(_access_record("/api/v1/vms/web1/vnc?token=abcdef"))
    error.handle(
        logging.LogRecord(
            "uvicorn.error",
            logging.INFO,
            __file__,
            1,
            '%s - "WebSocket %s" [accepted]',
            ("127.0.0.1:5000", "/api/v1/vms/a/console?token=zz9"),
            None,
        )
    )
    text = "\n".join(collect.lines)
    assert "abcdef" not in text and "zz9" not in text
    assert text.count(REDACTED) == 2
