"""``kvmgr vm vnc`` against a remote host over qemu+ssh (issue 16 item 3): libvirt cannot pass
a descriptor over ssh, so the forwarder reaches a TCP display at the host's address and answers
the VM's own password; a display on the remote host's unix socket is refused before anything
listens, with the ssh tunnel to use."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmgr.connect import Connection
from kvmgr.host import lab as labs
from kvmgr.xml.domain import Graphics, Video
from tests.integration.guest import demo_domain
from tests.integration.test_vnc_cli import _authenticate, _framebuffer_update, _server_init
from tests.lab.conftest import remove_domain

PREFIX = "lab-vnc-"
TCP_VM, SOCKET_VM = f"{PREFIX}tcp", f"{PREFIX}sock"
SRC = Path(__file__).parents[2] / "src"


def kvmgr(state: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KVMGR_URI", "KVMGR_DB_URL")}
    env.update({"KVMGR_STATE_DIR": str(state), "PYTHONPATH": str(SRC)})
    return subprocess.Popen(
        [sys.executable, "-m", "kvmgr.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def remote(lab_ssh: list[Connection], demo_iso: Path) -> Iterator[Connection]:
    conn = lab_ssh[0]
    for name, tcp in ((TCP_VM, True), (SOCKET_VM, False)):
        remove_domain(conn, name)
        spec = demo_domain(conn, name, str(demo_iso))
        graphics = Graphics()
        graphics.type = "vnc"
        if tcp:  # virt-install --graphics vnc,listen=0.0.0.0,password=...
            graphics.port, graphics.autoport = -1, True
            graphics.listen, graphics.passwd = "0.0.0.0", "vm-Pass1"
            graphics.listen_type, graphics.listen_address = "address", "0.0.0.0"
        else:
            graphics.listen_type = "socket"
        spec.devices.graphics.append(graphics)
        video = Video()
        video.model_type = "vga"
        spec.devices.videos.append(video)
        conn.virconn.defineXML(spec.to_xml()).create()
    try:
        yield conn
    finally:
        for name in (TCP_VM, SOCKET_VM):
            remove_domain(conn, name)


def test_forwarding_a_remote_display_over_ssh(
    lab: labs.Lab, remote: Connection, tmp_path: Path
) -> None:
    uri = lab.ssh_uri(lab.hosts[0])
    shown = kvmgr(tmp_path, "-c", uri, "vm", "vnc", TCP_VM, "-o", "json")
    out, err = shown.communicate(timeout=120)
    (row,) = json.loads(out)
    assert row["where"].startswith("0.0.0.0:") and row["password"] is True, (out, err)

    child = kvmgr(tmp_path, "-c", uri, "vm", "vnc", TCP_VM, "--listen", "0", "-o", "json")
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, child.communicate(timeout=30)
        record = json.loads(line)
        with socket.create_connection(("127.0.0.1", record["port"]), timeout=20) as viewer:
            assert _authenticate(viewer, record["password"]) == (0, b"")
            width, height, name = _server_init(viewer)
            assert name == f"QEMU ({TCP_VM})".encode() and width > 0 and height > 0
            assert _framebuffer_update(viewer, width, height)[0] >= 1
        _out, err = child.communicate(timeout=30)
        assert child.returncode == 0 and "the viewer disconnected" in err, err
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()

    refused = kvmgr(tmp_path, "-c", uri, "vm", "vnc", SOCKET_VM, "--listen", "0")
    out, err = refused.communicate(timeout=120)
    assert refused.returncode != 0 and not out, (out, err)  # nothing was listening
    text = " ".join(err.split())
    assert "could not pass it" in text and "ssh -L 5999:/" in text, err
