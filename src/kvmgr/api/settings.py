"""Settings of ``kvmgr serve`` from the environment (``KVMGR_*``), checked before serving.

The secret key signs the console tokens (HMAC), so that every API replica sharing it accepts a
token another replica issued.  It must never be a default: for a loopback listen one is generated
and kept in the state dir; for any other address the operator gives one (the same to every
replica).

Behind a reverse proxy every request comes from the proxy's address; ``KVMGR_TRUSTED_PROXIES``
(``--trusted-proxy``) names the proxies whose ``X-Forwarded-For`` gives the real client, which
the login limiter and the audit log then see.  Nobody else's header is believed.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kvmgr.errors import InvalidInput
from kvmgr.statedir import database_url, default_state_dir

MIN_SECRET_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KVMGR_", extra="ignore")

    state_dir: Path = Field(default_factory=default_state_dir)
    db_url: str | None = None
    secret_key: str | None = None
    uri: str | None = None  # libvirt URI; None means KVMGR_URI's/qemu:///system
    listen: str = "127.0.0.1:8080"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False
    session_hours: float = 12.0
    #: Bearer token that may read /metrics without a user (for Prometheus); None: users only.
    metrics_token: str | None = None
    login_attempts: int = 5  # failed logins per user+address within login_window seconds
    #: Failed logins per address, whatever the user names: stops spraying many names from one host.
    login_address_attempts: int = 20
    login_window: float = 60.0
    console_token_seconds: float = 30.0
    #: Seconds between the bulk stats samples pushed to dashboards and kept for the charts' last
    #: hour, taken while the server runs (0: no live stats, no charts).
    stats_interval: float = 2.0
    #: Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For is believed.
    trusted_proxies: str = ""
    #: Subscribe to libvirt's lifecycle events (off in unit tests that open many apps).
    events: bool = True
    #: Run a task worker inside the server (``kvmgr serve --no-worker``: API only).
    worker: bool = True
    worker_threads: int = Field(default=2, ge=1, le=64)
    #: Seconds a stopping server waits for running tasks before leaving them to recovery.
    worker_grace: float = 30.0

    @property
    def database_url(self) -> str:
        return database_url(self.db_url, self.state_dir)  # see kvmgr.statedir

    @property
    def proxies(self) -> list[str]:
        """The trusted proxies, each checked to be an address or a network."""
        entries = [entry.strip() for entry in self.trusted_proxies.split(",") if entry.strip()]
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise InvalidInput(
                    f"trusted proxy {entry!r} is not an IP address or network",
                    hint="e.g. --trusted-proxy 10.0.0.5 or KVMGR_TRUSTED_PROXIES=10.0.0.0/24,::1",
                ) from None
        return entries

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def cookie_secure(self) -> bool:
        """Mark the session cookie Secure: with our own TLS, and behind the TLS proxy that
        ``--insecure`` on a public address stands for (the browser speaks https to the proxy)."""
        host = self.listen.rpartition(":")[0].strip("[]")
        return self.tls or (self.insecure and not is_loopback(host))


def split_listen(listen: str) -> tuple[str, int]:
    """``127.0.0.1:8080`` / ``[::1]:8080`` -> (host, port), with a clear error when malformed."""
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidInput(
            f"--listen {listen!r} is not HOST:PORT", hint="e.g. 127.0.0.1:8080 or [::1]:8080"
        )
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serving(settings: Settings) -> Settings:
    """Refuse unsafe set-ups; fill in the secret for loopback.  Returns the settings to use."""
    host, _port = split_listen(settings.listen)
    loopback = is_loopback(host)
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise InvalidInput("TLS needs both a certificate and a key", hint="set both or neither")
    if not loopback and not settings.tls and not settings.insecure:
        raise InvalidInput(
            f"refusing to serve on {host} without TLS: passwords and cookies would cross the "
            "network in clear text",
            hint="give --tls-cert and --tls-key, or --insecure if a TLS proxy sits in front",
        )
    settings.proxies  # noqa: B018 - validates the list before serving
    if settings.secret_key is not None and len(settings.secret_key) < MIN_SECRET_LENGTH:
        raise InvalidInput(
            f"KVMGR_SECRET_KEY has {len(settings.secret_key)} characters",
            hint=f"use at least {MIN_SECRET_LENGTH} random characters (openssl rand -hex 32)",
        )
    if settings.secret_key is None:
        if not loopback:
            raise InvalidInput(
                f"refusing to serve on {host} without KVMGR_SECRET_KEY",
                hint="export KVMGR_SECRET_KEY=$(openssl rand -hex 32)",
            )
        settings = settings.model_copy(update={"secret_key": persistent_secret(settings.state_dir)})
    return settings


def persistent_secret(state_dir: Path) -> str:
    """The secret kept in ``state_dir/secret_key`` (mode 0600), made on first use."""
    path = state_dir / "secret_key"
    try:
        text = path.read_text().strip()
        if len(text) >= MIN_SECRET_LENGTH:
            return text
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret
