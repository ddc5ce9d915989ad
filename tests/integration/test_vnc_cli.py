"""``kvmgr vm vnc`` and the graphics in ``vm info`` on the real daemon (issue 16 item 3).

Two demo guests, started paused (no test needs their OS): one as kvmgr makes them (VNC on a
unix socket, no password), one as virt-install makes them (VNC on 127.0.0.1 TCP with its own
password).  The forwarder runs as a real ``kvmgr`` process; the RFB client below is written
out here, not borrowed from the service, so the test checks the protocol rather than the code
against itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from typer.testing import CliRunner

from kvmgr.cli.common import state
from kvmgr.cli.main import app
from kvmgr.connect import Connection
from kvmgr.errors import InvalidState
from kvmgr.services import vnc
from kvmgr.xml.domain import Domain, Graphics, Video
from tests.integration.conftest import Cleanup
from tests.integration.guest import demo_domain

PREFIX = "t-vnc-"
SOCKET_VM = f"{PREFIX}sock"
TCP_VM = f"{PREFIX}tcp"
OFF_VM = f"{PREFIX}off"
VM_PASSWORD = "vm-Pass1"
URI = "qemu:///system"
KVMGR = [sys.executable, "-m", "kvmgr.cli.main", "-c", URI]


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KVMGR_STATE_DIR", str(tmp_path))
    yield
    state.close()


def kvmgr(*argv: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["-c", URI, *argv])
    state.close()
    state.uri = None
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def _with_vnc(spec: Domain, *, tcp: bool) -> Domain:
    graphics = Graphics()
    graphics.type = "vnc"
    if tcp:  # what virt-install --graphics vnc,password=... writes
        graphics.port, graphics.autoport = -1, True
        graphics.listen, graphics.passwd = "127.0.0.1", VM_PASSWORD
        graphics.listen_type, graphics.listen_address = "address", "127.0.0.1"
    else:
        graphics.listen_type = "socket"
    spec.devices.graphics.append(graphics)
    video = Video()
    video.model_type = "vga"
    spec.devices.videos.append(video)
    return spec


@pytest.fixture(scope="module")
def guests(conn: Connection, demo_iso: Path, module_cleanup: Cleanup) -> dict[str, Any]:
    module_cleanup.prefix(PREFIX)
    made = {}
    for name, tcp in ((SOCKET_VM, False), (TCP_VM, True)):
        spec = _with_vnc(demo_domain(conn, name, str(demo_iso)), tcp=tcp)
        made[name] = conn.virconn.defineXML(spec.to_xml())
        # Paused from the start: QEMU (and its VNC server, display and password) is all these
        # tests talk to, and kvmgr's vm vnc serves a paused VM as a running one; two emulated
        # boots would only take CPU from the forwarder processes under test.
        made[name].createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    conn.virconn.defineXML(_with_vnc(demo_domain(conn, OFF_VM, str(demo_iso)), tcp=False).to_xml())
    return made


def _live_graphics(dom: libvirt.virDomain) -> Graphics:
    (graphics,) = Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)).devices.graphics
    return graphics


# ------------------------------------------------------------------ a tiny RFB client
def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def _authenticate(sock: socket.socket, password: str) -> tuple[int, bytes]:
    """RFB 3.8 up to SecurityResult with VNC authentication: (status, failure reason)."""
    assert _recv(sock, 12) == b"RFB 003.008\n"
    sock.sendall(b"RFB 003.008\n")
    (count,) = _recv(sock, 1)
    assert list(_recv(sock, count)) == [2], "VNC authentication, and nothing else"
    sock.sendall(b"\x02")
    challenge = _recv(sock, 16)
    sock.sendall(vnc.auth_response(password, challenge))  # DES: checked against QEMU below
    (status,) = struct.unpack(">I", _recv(sock, 4))
    if status == 0:
        return status, b""
    (length,) = struct.unpack(">I", _recv(sock, 4))
    return status, _recv(sock, length)


def _server_init(sock: socket.socket) -> tuple[int, int, bytes]:
    sock.sendall(b"\x01")  # ClientInit, shared
    width, height = struct.unpack(">HH", _recv(sock, 4))
    pixel_format = _recv(sock, 16)
    assert pixel_format[0] == 32, "QEMU's default: 32 bits per pixel (raw is 4 bytes a pixel)"
    (length,) = struct.unpack(">I", _recv(sock, 4))
    return width, height, _recv(sock, length)


def _framebuffer_update(sock: socket.socket, width: int, height: int) -> tuple[int, int]:
    """Ask for the whole screen and read the update; (rectangles, bytes of pixels)."""
    sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
    kind, _pad, rectangles = struct.unpack(">BBH", _recv(sock, 4))
    assert kind == 0, f"message type {kind}, not FramebufferUpdate"
    pixels = 0
    for _ in range(rectangles):
        x, y, w, h, encoding = struct.unpack(">HHHHi", _recv(sock, 12))
        assert encoding == 0, "raw: the client asked for no other encoding"
        assert x + w <= width and y + h <= height and w * h > 0
        pixels += len(_recv(sock, w * h * 4))
    return rectangles, pixels


def _direct_size(dom: libvirt.virDomain) -> tuple[int, int]:
    """The framebuffer size QEMU reports on a descriptor straight from libvirt."""
    with socket.socket(
        fileno=dom.openGraphicsFD(0, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)
    ) as s:
        s.settimeout(10)
        _recv(s, 12)
        s.sendall(b"RFB 003.008\n")
        (count,) = _recv(s, 1)
        assert 1 in _recv(s, count)
        s.sendall(b"\x01")
        assert _recv(s, 4) == b"\0\0\0\0"
        width, height, _name = _server_init(s)
        return width, height


class Forwarding:
    """``kvmgr vm vnc NAME --listen ... -o json`` as a child process."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        started = time.monotonic()
        self.child = subprocess.Popen(
            [*KVMGR, "vm", "vnc", *args, "-o", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.child.stdout is not None
        line = self.child.stdout.readline()
        self.ready_seconds = time.monotonic() - started
        assert line, self.child.communicate(timeout=30)
        self.record: dict[str, Any] = json.loads(line)

    def connect(self) -> socket.socket:
        return socket.create_connection((self.record["host"], self.record["port"]), timeout=20)

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        _out, err = self.child.communicate(timeout=timeout)
        return self.child.returncode, err

    def kill(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.communicate()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------ the tests
def test_vm_vnc_prints_the_display(guests: dict[str, Any]) -> None:
    sock_path = _live_graphics(guests[SOCKET_VM]).listen_socket
    code, out = kvmgr("vm", "vnc", SOCKET_VM)
    assert code == 0 and f"unix:{sock_path}" in out and "socket" in out, out
    assert "--listen 127.0.0.1:" in out  # the hint (stderr, mixed in by CliRunner)
    code, out = kvmgr("vm", "vnc", TCP_VM, "-o", "json")
    port = _live_graphics(guests[TCP_VM]).port
    (row,) = json.loads(out)
    assert code == 0 and row["where"] == f"127.0.0.1:{port}" and row["password"] is True, row


def test_vm_info_shows_the_graphics(guests: dict[str, Any]) -> None:
    code, out = kvmgr("vm", "info", SOCKET_VM, "-o", "json")
    assert code == 0, out
    assert json.loads(out)["graphics"] == [
        {
            "type": "vnc",
            "listen": "socket",
            "address": None,
            "socket": _live_graphics(guests[SOCKET_VM]).listen_socket,
            "port": None,
            "password": False,
        }
    ]
    code, out = kvmgr("vm", "info", TCP_VM, "-o", "json")
    (graphics,) = json.loads(out)["graphics"]
    assert graphics["listen"] == "address" and graphics["address"] == "127.0.0.1"
    live_port = _live_graphics(guests[TCP_VM]).port
    assert live_port is not None and graphics["port"] == live_port >= 5900
    assert graphics["password"] is True and VM_PASSWORD not in out  # said, never shown
    code, out = kvmgr("vm", "info", TCP_VM)  # for people: one line per display
    assert code == 0 and "password=yes" in out and f"port={graphics['port']}" in out, out


def test_forwarding_with_a_one_time_password(guests: dict[str, Any]) -> None:
    port = _free_port()
    before = _direct_size(guests[SOCKET_VM])
    forward = Forwarding(SOCKET_VM, "--listen", f"127.0.0.1:{port}", "--no-viewer")
    try:
        record = forward.record
        assert record["port"] == port and record["url"] == f"vnc://127.0.0.1:{port}"
        assert len(record["password"]) == 8 and record["viewer"] is None
        with forward.connect() as wrong:
            status, reason = _authenticate(wrong, "not-it!!")
            assert status == 1 and reason == b"authentication failed"
        viewer = forward.connect()
        started = time.monotonic()
        assert _authenticate(viewer, record["password"]) == (0, b"")
        width, height, name = _server_init(viewer)
        handshake = time.monotonic() - started
        after = _direct_size(guests[SOCKET_VM])
        assert (width, height) in (before, after) and name == f"QEMU ({SOCKET_VM})".encode()
        started = time.monotonic()
        rectangles, pixels = _framebuffer_update(viewer, width, height)
        update = time.monotonic() - started
        assert rectangles >= 1 and pixels == width * height * 4  # a full request: every pixel
        with forward.connect() as again:  # used up, while the first session still runs
            assert _authenticate(again, record["password"])[0] == 1
        viewer.close()
        code, err = forward.finish()
        assert code == 0 and "the viewer disconnected" in err, err
        with pytest.raises(OSError):  # nothing listens any more
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        print(
            f"vm vnc: ready line after {forward.ready_seconds:.2f} s, VNC auth + ServerInit "
            f"{handshake * 1000:.0f} ms, a full raw frame ({width}x{height}, {pixels} bytes) "
            f"{update * 1000:.0f} ms"
        )
    finally:
        forward.kill()


def test_a_display_with_its_own_password(guests: dict[str, Any]) -> None:
    dom = guests[TCP_VM]
    # QEMU's own server checks our DES (a descriptor without SKIPAUTH gets QEMU's password
    # check): a wrong password is refused, the right one accepted.
    for password, status in (("wrong-pw", 1), (VM_PASSWORD, 0)):
        with socket.socket(fileno=dom.openGraphicsFD(0, 0)) as direct:
            direct.settimeout(10)
            assert _authenticate(direct, password)[0] == status
            if status == 0:
                assert _server_init(direct)[2] == f"QEMU ({TCP_VM})".encode()
    # The forwarder does not need the VM's password (libvirt's descriptor skips it) ...
    forward = Forwarding(TCP_VM, "--listen", "127.0.0.1:0", "--no-viewer")
    try:
        with forward.connect() as viewer:
            assert _authenticate(viewer, forward.record["password"]) == (0, b"")
            width, height, _name = _server_init(viewer)
            assert _framebuffer_update(viewer, width, height)[0] >= 1
        assert forward.finish()[0] == 0
    finally:
        forward.kill()


NETWORK_PATH = """
import socket, sys
from kvmgr.connect import open_connection
from kvmgr.services import vnc
conn = open_connection("qemu:///system")
dom, display = vnc.vnc_display(conn, sys.argv[1])
address = vnc._network_address(conn, sys.argv[1], display, "test")
with socket.create_connection(address, timeout=20) as sock:
    print(vnc.client_handshake(sock, vnc._vm_password(dom, display)))
    sock.sendall(b"\\x01")
    head = vnc.recv_exact(sock, 24)
    print(vnc.recv_exact(sock, int.from_bytes(head[20:24], "big")).decode())
"""


def test_the_network_path_answers_the_vms_password(
    conn: Connection, guests: dict[str, Any]
) -> None:
    # What a remote host gets (no descriptor over ssh): the display's TCP address, answered
    # with the VM's own password from its secure definition (tests/lab has it over real ssh).
    # The port is in the network namespace QEMU runs in (kvmgr starts libvirtd in its own), so
    # this part runs there.
    pid = Path(f"/run/libvirt/qemu/{TCP_VM}.pid").read_text().strip()
    child = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", NETWORK_PATH, TCP_VM],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split("\n")[:2] == ["(3, 8)", f"QEMU ({TCP_VM})"], child.stdout
    _dom, display = vnc.vnc_display(conn, SOCKET_VM)
    with pytest.raises(InvalidState, match="could not pass it") as refused:
        vnc._network_address(conn, SOCKET_VM, display, "test")
    assert refused.value.hint and "ssh -L 5999:/" in refused.value.hint
    assert vnc.passes_descriptors(URI) and vnc.passes_descriptors("qemu+unix:///system")
    assert not vnc.passes_descriptors("qemu+ssh://root@node1/system")
    assert not vnc.passes_descriptors("qemu://node1/system")  # TLS


def test_a_viewer_is_started_when_installed(guests: dict[str, Any], tmp_path: Path) -> None:
    # A stand-in remote-viewer: it reads the connection file it is given, as the real one does,
    # authenticates with the password in it, reads ServerInit and leaves.
    report = tmp_path / "viewer.json"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    viewer = bin_dir / "remote-viewer"
    viewer.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(f"""
        import configparser, json, os, socket, stat, sys
        sys.path[:0] = {sys.path!r}
        from tests.integration.test_vnc_cli import _authenticate, _server_init
        path = sys.argv[1]
        mode = stat.S_IMODE(os.stat(path).st_mode)
        vv = configparser.ConfigParser(interpolation=None)
        vv.read(path)
        section = vv["virt-viewer"]
        os.unlink(path)  # delete-this-file=1
        with socket.create_connection((section["host"], int(section["port"])), timeout=20) as s:
            status = _authenticate(s, section["password"])[0]
            width, height, _name = _server_init(s)
        with open({str(report)!r}, "w") as out:
            json.dump({{"mode": mode, "type": section["type"], "status": status,
                       "size": [width, height], "delete": section["delete-this-file"]}}, out)
        """)
    )
    viewer.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    forward = Forwarding(SOCKET_VM, "--viewer", env=env)
    try:
        assert forward.record["viewer"] == str(viewer)
        code, err = forward.finish(timeout=60)
        assert code == 0, err
        seen = json.loads(report.read_text())
        assert seen["mode"] == stat.S_IRUSR | stat.S_IWUSR and seen["type"] == "vnc"
        assert seen["status"] == 0 and seen["delete"] == "1" and seen["size"][0] > 0
        assert forward.record["password"] not in err
    finally:
        forward.kill()


def test_no_viewer_installed_is_not_an_error(guests: dict[str, Any], tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no remote-viewer on it
    forward = Forwarding(SOCKET_VM, "--viewer", env=env)
    try:
        assert forward.record["viewer"] is None and forward.record["password"]
        assert forward.child.poll() is None  # still serving, waiting for a viewer
        with forward.connect() as viewer:
            assert _authenticate(viewer, forward.record["password"]) == (0, b"")
        code, err = forward.finish()
        assert code == 0 and "no remote-viewer installed" in err, err
    finally:
        forward.kill()


def test_refusals(guests: dict[str, Any]) -> None:
    code, out = kvmgr("vm", "vnc", SOCKET_VM, "--listen", "0.0.0.0:5999")
    assert code != 0 and "not a loopback address" in out and "--allow-remote" in out, out
    code, out = kvmgr("vm", "vnc", OFF_VM, "--listen", "127.0.0.1:0")
    assert code != 0 and "is not running" in out and f"kvmgr vm start {OFF_VM}" in out, out
    code, out = kvmgr("vm", "vnc", f"{PREFIX}missing")
    assert code != 0 and "does not exist" in out, out


def test_a_viewer_that_exits_first_and_ctrl_c(guests: dict[str, Any], tmp_path: Path) -> None:
    viewer = tmp_path / "remote-viewer"
    viewer.write_text("#!/bin/sh\nexit 3\n")  # no $DISPLAY, say
    viewer.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    forward = Forwarding(SOCKET_VM, "--viewer", env=env)
    try:
        code, err = forward.finish()
        text = " ".join(err.split())
        assert code == 1 and "viewer exited (status 3) before it connected" in text, err
        assert "--no-viewer" in text
    finally:
        forward.kill()
    forward = Forwarding(SOCKET_VM, "--listen", "127.0.0.1:0", "--no-viewer")
    try:
        forward.child.send_signal(signal.SIGINT)
        code, err = forward.finish()
        assert code == 0 and "stopped" in err and "Traceback" not in err, err
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", forward.record["port"]), timeout=2).close()
    finally:
        forward.kill()
