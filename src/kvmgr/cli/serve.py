"""``kvmgr serve``: the REST API and the web UI in one process (uvicorn)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Annotated

import typer

from kvmgr.cli.common import report_errors, state
from kvmgr.errors import InvalidInput

# One command, not a group: its help then reads 'kvmgr serve [OPTIONS]', and shell completion is
# installed through 'kvmgr' itself, not through each command.
app = typer.Typer(add_completion=False)


@app.command()
@report_errors
def serve(
    listen: Annotated[
        str, typer.Option("--listen", "-l", help="HOST:PORT; non-loopback needs TLS or --insecure")
    ] = "127.0.0.1:8080",
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="serve plain HTTP on a non-loopback address")
    ] = False,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-proxy",
            help="address or network of a reverse proxy whose X-Forwarded-For names the real "
            "client (repeat for several); nobody else's header is believed",
        ),
    ] = None,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker", help="also run queued tasks here (--no-worker: API only)"
        ),
    ] = True,
) -> None:
    """Run the REST API (/api/v1, docs at /api/docs) and the web UI."""
    import uvicorn

    from kvmgr.api.app import create_app
    from kvmgr.api.security import install_log_redaction
    from kvmgr.api.settings import Settings, check_serving, split_listen

    overrides: dict[str, object] = {"listen": listen, "insecure": insecure, "worker": worker}
    if tls_cert is not None:
        overrides["tls_cert"] = tls_cert
    if tls_key is not None:
        overrides["tls_key"] = tls_key
    if state.uri is not None:
        overrides["uri"] = state.uri
    if trusted_proxy:
        overrides["trusted_proxies"] = ",".join(trusted_proxy)
    settings = check_serving(Settings(**overrides))  # type: ignore[arg-type]
    host, port = split_listen(settings.listen)
    if settings.tls_cert or settings.tls_key:
        _check_tls(settings.tls_cert, settings.tls_key)
    install_log_redaction()  # console tokens ride in the websocket URL's query string
    listener = _bind(host, port)  # before anything starts: a port in use is one line
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        # Forwarded headers only from the proxies named: anyone else could pick their address.
        proxy_headers=bool(settings.proxies),
        forwarded_allow_ips=settings.proxies or None,
        log_level="info",
    )
    uvicorn.Server(config).run(sockets=[listener])


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a clear error when the address is taken or not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # no wait after a restart
    try:
        listener.bind((host, port))
    except OSError as err:
        listener.close()
        if err.errno == errno.EADDRINUSE:
            raise InvalidInput(
                f"cannot serve on {host}:{port}: the port is in use (another kvmgr serve?)",
                hint="stop what listens there, or give another --listen HOST:PORT",
            ) from None
        raise InvalidInput(
            f"cannot serve on {host}:{port}: {err.strerror}",
            hint="give an address of this machine in --listen (e.g. 127.0.0.1:8080)",
        ) from None
    listener.listen(2048)
    return listener


def _check_tls(cert: Path | None, key: Path | None) -> None:
    """Load the certificate and key once, so a bad pair is one line, not uvicorn's traceback."""
    import ssl

    if cert is None or key is None:
        raise InvalidInput("TLS needs both --tls-cert and --tls-key")
    for path in (cert, key):
        if not path.is_file():
            raise InvalidInput(f"TLS file {path} does not exist or is not a file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as err:
        raise InvalidInput(
            f"cannot load the TLS certificate {cert} with key {key}: {err}",
            hint="give a PEM certificate and its matching unencrypted PEM private key",
        ) from err
