"""Issues 8.1 (REST), 8.8 and 8.9: ``kvmgr serve`` as a subprocess on loopback.

* REST inventory: ``GET /api/v1/vms`` (server warm, one keep-alive connection) against raw
  libvirt-python in the bench process on the same test:/// file;
* event freshness: time from an outside ``virsh start`` to the server's SSE stream
  (``/api/v1/events``) reporting it, on the real daemon;
* memory: the server's VmRSS idle (empty host) and with 5,000 domains, each after a warm GET.

The server gets its own state directory (a fresh user database with one admin and a token) and
listens on a free port of 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt

from bench import cleanup, raw_provision
from bench.core import (
    BenchError,
    Context,
    Line,
    Result,
    Skip,
    Target,
    interleaved,
    run_command,
    timed,
)
from bench.driverfile import NAME_PREFIX, write_driver_file
from bench.inventory import SAME_STATS, raw_inventory, sizes
from bench.provision import IMAGES

REST_TARGET = Target("<=3x raw", max_ratio=3.0)
FRESHNESS_TARGET = Target("<1 s", max_value=1.0)
RSS_TARGET = Target("<150 MB", max_value=150.0)
START_TIMEOUT = 60.0
EVENT_VM = f"{NAME_PREFIX}ev-vm"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    token: str

    def connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, conn: http.client.HTTPConnection, path: str) -> bytes:
        conn.request("GET", path, headers=self.headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise BenchError(f"GET {path} answered {response.status}: {body[:200]!r}")
        return body

    def rss_mb(self) -> float:
        for text in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if text.startswith("VmRSS:"):
                return int(text.split()[1]) / 1024
        raise BenchError("the server has no VmRSS")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(ctx: Context, uri: str, state_dir: Path) -> Iterator[Server]:
    """A ``kvmgr serve`` on loopback with a fresh admin token; stopped and waited for after."""
    state_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KVMGR_STATE_DIR": str(state_dir), "KVMGR_URI": uri}
    password = secrets.token_urlsafe(16)
    run_command(
        [ctx.kvmgr, "user", "create", "bench", "--role", "admin"],
        env={**env, "KVMGR_PASSWORD": password},
    )
    token = run_command([ctx.kvmgr, "user", "token", "bench"], env=env).strip().splitlines()[-1]
    port = _free_port()
    log = (state_dir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [ctx.kvmgr, "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    server = Server(proc, port, token)
    try:
        _wait_until_up(server, state_dir / "serve.log")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_until_up(server: Server, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise BenchError(f"kvmgr serve exited {server.proc.returncode}: {' | '.join(tail)}")
        conn = server.connection(timeout=5)
        try:
            server.get(conn, "/api/v1/vms")
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.2)
        finally:
            conn.close()
    raise BenchError(f"kvmgr serve did not answer within {START_TIMEOUT:g} s")


def _missing() -> str | None:
    for module in ("kvmgr.api.app", "kvmgr.cli.serve", "kvmgr.cli.user"):
        if importlib.util.find_spec(module) is None:
            return f"not available yet: {module} is missing"
    return None


# ------------------------------------------------------------------------------ REST + RSS
def run_rest(ctx: Context) -> Iterator[Line]:
    """REST inventory at each N, and the server's RSS idle and at the largest N."""
    reason = _missing()
    if reason:
        yield Skip("rest", reason)
        return
    empty = write_driver_file(ctx.workdir / "rest-empty.xml", 0)
    with serve(ctx, empty, ctx.workdir / "serve-empty") as server:
        conn = server.connection()
        server.get(conn, "/api/v1/vms")
        idle = server.rss_mb()
        conn.close()
    yield Result("memory", "serve RSS idle (empty host)", "MB", "kvmgr serve", [idle])
    for count in sizes(ctx):
        uri = write_driver_file(ctx.workdir / f"rest-{count}.xml", count)
        with serve(ctx, uri, ctx.workdir / f"serve-{count}") as server:
            yield from _rest_lines(ctx, server, uri, count)


def _rest_lines(ctx: Context, server: Server, uri: str, count: int) -> Iterator[Line]:
    ctx.say(f"REST inventory at N={count}")
    http_conn = server.connection()
    virconn = libvirt.open(uri)
    try:
        rows = json.loads(server.get(http_conn, "/api/v1/vms"))
        listed = len(rows) if isinstance(rows, list) else len(rows.get("items", rows))
        measured = interleaved(
            {
                "rest": timed(lambda: server.get(http_conn, "/api/v1/vms")),
                "raw": timed(lambda: raw_inventory(virconn)),
            },
            ctx.reps(9, 21),
        )
        rss = server.rss_mb()
    finally:
        http_conn.close()
        virconn.close()
    yield Result(
        "rest",
        f"GET /api/v1/vms N={count}",
        "s",
        "REST (warm, keep-alive)",
        measured["rest"],
        "raw libvirt-python",
        measured["raw"],
        REST_TARGET,
        note=f"{listed} rows in the answer",
    )
    yield Result(
        "memory",
        f"serve RSS after GET /api/v1/vms, N={count}",
        "MB",
        "kvmgr serve",
        [rss],
        target=RSS_TARGET if count >= 5000 else None,
    )


# ------------------------------------------------------------------------------ events
def run_events(ctx: Context) -> Iterator[Line]:
    reason = _missing()
    if reason:
        yield Skip("events", reason)
        return
    virconn = libvirt.open(ctx.system_uri)
    try:
        cleanup.sweep(virconn, EVENT_VM, disks_under=[IMAGES])
        cleanup.sweep_files(virconn, IMAGES, EVENT_VM)
        raw_provision.main(ctx.system_uri, EVENT_VM, f"{IMAGES}/{EVENT_VM}.qcow2", "qemu")
        with serve(ctx, ctx.system_uri, ctx.workdir / "serve-events") as server:
            values = [_one_event(ctx, server, virconn) for _ in range(ctx.reps(3, 7))]
    finally:
        cleanup.sweep(virconn, EVENT_VM, disks_under=[IMAGES])
        virconn.close()
    yield Result(
        "events",
        "virsh start -> SSE event",
        "s",
        "GET /api/v1/events",
        values,
        target=FRESHNESS_TARGET,
        note="clock from launching 'virsh start' (its own ~30 ms start-up included)",
    )


def _one_event(ctx: Context, server: Server, virconn: libvirt.virConnect) -> float:
    conn = server.connection(timeout=30)
    try:
        conn.request("GET", "/api/v1/events", headers=server.headers)
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"GET /api/v1/events answered {response.status}")
        response.readline()  # the ": subscribed" comment: we are on the bus now
        began = time.perf_counter()
        run_command(["virsh", "-q", "-c", ctx.system_uri, "start", EVENT_VM])
        while True:
            line = response.readline()
            if not line:
                raise BenchError("the event stream ended before the start was reported")
            if line.startswith(b"data:") and _is_start_of(line[5:], EVENT_VM):
                return time.perf_counter() - began
    finally:
        conn.close()
        with contextlib.suppress(libvirt.libvirtError):
            virconn.lookupByName(EVENT_VM).destroy()


def _is_start_of(data: bytes, name: str) -> bool:
    try:
        event = json.loads(data)
    except ValueError:
        return False
    text = json.dumps(event)
    return name in text and "start" in text.lower()


__all__ = ["SAME_STATS", "run_events", "run_rest"]
