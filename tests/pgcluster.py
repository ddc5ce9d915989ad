"""A throw-away PostgreSQL cluster on a loopback port, for the tests and the benchmarks.

initdb and pg_ctl run as the 'postgres' user in a temporary directory that is removed afterwards;
the server listens on 127.0.0.1 only, on a free port, with its socket in that directory.  One
helper, so the tests and bench/ start the server the same way.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresMissing(Exception):
    """PostgreSQL is not installed here; the message says what to install."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _account() -> pwd.struct_passwd:
    if not (PG_BIN / "initdb").exists():
        raise PostgresMissing("PostgreSQL 15 is not installed: run scripts/install-test-deps.sh")
    try:
        return pwd.getpwnam("postgres")
    except KeyError as err:
        raise PostgresMissing(
            "no 'postgres' user to run the server as (install the postgresql package)"
        ) from err


def missing_reason() -> str | None:
    """Why no cluster can be started here, or None when one can."""
    try:
        _account()
    except PostgresMissing as missing:
        return str(missing)
    return None


def _as_postgres(*argv: str) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=60
    )


@contextlib.contextmanager
def throwaway_postgres(prefix: str = "kvmgr-pg-") -> Iterator[str]:
    """Yield the SQLAlchemy URL of a fresh cluster; raises PostgresMissing before starting one."""
    account = _account()
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chown(root, account.pw_uid, account.pw_gid)
    data, port = root / "data", _free_port()
    try:
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
        # -l: the server's output goes to a file, not to the pipe run() waits on.
        log = str(root / "server.log")
        _as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", log, "-o", options, "-w", "start"
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
