"""The pieces of ``vm vnc``'s forwarder: VNC's DES, the RFB handshakes on both sides, the
one-time password, listen addresses, and reading displays from definitions."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import cast

import pytest

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, InvalidState
from kvmgr.services import vnc
from kvmgr.services.vnc import RFBError
from kvmgr.xml.domain import Domain

pytestmark = pytest.mark.timeout(30)


def test_des_is_single_des() -> None:
    # The classic DES worked example (key 133457799BBCDFF1): TripleDES with one key is DES.
    key = bytes.fromhex("133457799BBCDFF1")
    assert vnc.des_encrypt(key, bytes.fromhex("0123456789ABCDEF")).hex() == "85e813540f0ab405"


def test_the_des_key_mirrors_each_byte_and_pads_to_eight() -> None:
    assert vnc.des_key("\x01") == b"\x80" + b"\0" * 7
    assert vnc.des_key("a") == bytes([0b10000110]) + b"\0" * 7  # 'a' = 0b01100001
    assert vnc.des_key("abcdefghij") == vnc.des_key("abcdefgh")  # VNC uses 8 characters only


def test_auth_response_needs_sixteen_bytes() -> None:
    assert len(vnc.auth_response("secret", bytes(16))) == 16
    with pytest.raises(RFBError):
        vnc.auth_response("secret", bytes(8))


def test_new_passwords_are_eight_random_characters() -> None:
    passwords = {vnc.new_password() for _ in range(50)}
    assert len(passwords) == 50 and all(len(p) == 8 and p.isalnum() for p in passwords)


@pytest.mark.parametrize(
    ("banner", "version", "used"),
    [
        (b"RFB 003.008\n", (3, 8), (3, 8)),
        (b"RFB 003.007\n", (3, 7), (3, 7)),
        (b"RFB 003.003\n", (3, 3), (3, 3)),
        (b"RFB 003.889\n", (3, 889), (3, 8)),  # Apple's screen sharing
        (b"RFB 003.005\n", (3, 5), (3, 3)),  # RFC 6143: unknown 3.x is 3.3
    ],
)
def test_versions(banner: bytes, version: tuple[int, int], used: tuple[int, int]) -> None:
    assert vnc.parse_version(banner) == version
    assert vnc.viewer_version(version) == used


@pytest.mark.parametrize("banner", [b"HTTP/1.1 200", b"RFB 003.008", b"RFB 00x.008\n"])
def test_bad_versions(banner: bytes) -> None:
    with pytest.raises(RFBError):
        vnc.parse_version(banner)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    one, other = socket.socketpair()
    one.settimeout(10)
    other.settimeout(10)
    yield one, other
    one.close()
    other.close()


def _in_thread(work: Callable[[], object]) -> dict[str, object]:
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except Exception as err:  # handed to the test thread
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result["thread"] = thread
    return result


def _join(result: dict[str, object]) -> object:
    thread = result["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(10)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


CHALLENGE = bytes(range(16))


def _checker(password: str) -> Callable[[bytes, bytes], bool]:
    return lambda challenge, response: response == vnc.auth_response(password, challenge)


def test_the_server_side_offers_vnc_auth_only(pair: tuple[socket.socket, socket.socket]) -> None:
    server, viewer = pair
    result = _in_thread(lambda: vnc.serve_vnc_auth(server, _checker("pw"), challenge=CHALLENGE))
    assert viewer.recv(12) == b"RFB 003.008\n"
    viewer.sendall(b"RFB 003.008\n")
    assert vnc.recv_exact(viewer, 2) == bytes([1, vnc.SEC_VNC_AUTH])
    viewer.sendall(bytes([vnc.SEC_VNC_AUTH]))
    assert vnc.recv_exact(viewer, 16) == CHALLENGE
    viewer.sendall(vnc.auth_response("pw", CHALLENGE))
    assert vnc.recv_exact(viewer, 4) == b"\0\0\0\0"
    assert _join(result) is True


def test_a_wrong_answer_gets_a_reason_in_3_8(pair: tuple[socket.socket, socket.socket]) -> None:
    server, viewer = pair
    result = _in_thread(lambda: vnc.serve_vnc_auth(server, _checker("pw"), challenge=CHALLENGE))
    viewer.recv(12)
    viewer.sendall(b"RFB 003.008\n")
    vnc.recv_exact(viewer, 2)
    viewer.sendall(bytes([vnc.SEC_VNC_AUTH]))
    vnc.recv_exact(viewer, 16)
    viewer.sendall(vnc.auth_response("other", CHALLENGE))
    (status, length) = struct.unpack(">II", vnc.recv_exact(viewer, 8))
    assert status == 1 and vnc.recv_exact(viewer, length) == b"authentication failed"
    assert _join(result) is False


def test_a_3_3_viewer_is_told_the_type(pair: tuple[socket.socket, socket.socket]) -> None:
    server, viewer = pair
    result = _in_thread(lambda: vnc.serve_vnc_auth(server, _checker("pw"), challenge=CHALLENGE))
    viewer.recv(12)
    viewer.sendall(b"RFB 003.003\n")
    assert vnc.recv_exact(viewer, 4) == struct.pack(">I", vnc.SEC_VNC_AUTH)
    assert vnc.recv_exact(viewer, 16) == CHALLENGE
    viewer.sendall(vnc.auth_response("pw", CHALLENGE))
    assert vnc.recv_exact(viewer, 4) == b"\0\0\0\0"
    assert _join(result) is True


def test_a_viewer_choosing_no_auth_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    server, viewer = pair
    result = _in_thread(lambda: vnc.serve_vnc_auth(server, _checker("pw")))
    viewer.recv(12)
    viewer.sendall(b"RFB 003.008\n")
    vnc.recv_exact(viewer, 2)
    viewer.sendall(bytes([vnc.SEC_NONE]))
    assert struct.unpack(">I", vnc.recv_exact(viewer, 4)) == (1,)
    assert _join(result) is False


def _fake_qemu(sock: socket.socket, types: bytes, *, password: str | None = None) -> None:
    """QEMU's side of the handshake: 3.8, the given security types, then echo."""
    sock.sendall(b"RFB 003.008\n")
    assert vnc.recv_exact(sock, 12) == b"RFB 003.008\n"
    sock.sendall(bytes([len(types)]) + types)
    chosen = vnc.recv_exact(sock, 1)[0]
    if chosen == vnc.SEC_VNC_AUTH:
        sock.sendall(CHALLENGE)
        ok = password is not None and vnc.recv_exact(sock, 16) == vnc.auth_response(
            password, CHALLENGE
        )
        sock.sendall(struct.pack(">I", 0 if ok else 1))
        if not ok:
            sock.sendall(struct.pack(">I", 6) + b"denied")
            return
    else:
        sock.sendall(struct.pack(">I", 0))
    while data := sock.recv(4096):
        sock.sendall(data)


def test_the_client_side_prefers_no_auth(pair: tuple[socket.socket, socket.socket]) -> None:
    qemu, us = pair
    server = _in_thread(lambda: _fake_qemu(qemu, bytes([vnc.SEC_VNC_AUTH, vnc.SEC_NONE])))
    assert vnc.client_handshake(us, "unused") == (3, 8)
    us.sendall(b"\x01")
    assert us.recv(1) == b"\x01"
    us.close()
    _join(server)


def test_the_client_side_answers_a_password(pair: tuple[socket.socket, socket.socket]) -> None:
    qemu, us = pair
    server = _in_thread(lambda: _fake_qemu(qemu, bytes([vnc.SEC_VNC_AUTH]), password="vm-pw"))
    assert vnc.client_handshake(us, "vm-pw") == (3, 8)
    us.close()
    _join(server)


def test_the_client_side_reports_refusals(pair: tuple[socket.socket, socket.socket]) -> None:
    qemu, us = pair
    server = _in_thread(lambda: _fake_qemu(qemu, bytes([vnc.SEC_VNC_AUTH]), password="vm-pw"))
    with pytest.raises(RFBError, match="denied"):
        vnc.client_handshake(us, "wrong")
    _join(server)


def test_the_client_side_without_a_type_it_knows(pair: tuple[socket.socket, socket.socket]) -> None:
    qemu, us = pair
    qemu.sendall(b"RFB 003.008\n" + bytes([1, 19]))  # VeNCrypt only
    with pytest.raises(RFBError, match=r"\[19\]"):
        vnc.client_handshake(us)


# ------------------------------------------------------------------ the forwarder end to end
def _viewer(port: int, password: str) -> socket.socket:
    """A viewer that authenticates, sends ClientInit and reads what the fake QEMU echoes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    vnc.client_handshake(sock, password)
    return sock


@pytest.fixture
def forwarder() -> Iterator[tuple[vnc.Forwarder, dict[str, object]]]:
    opened: list[socket.socket] = []

    def opener() -> tuple[socket.socket, str | None]:
        qemu, ours = socket.socketpair()
        opened.append(qemu)
        threading.Thread(target=_fake_qemu, args=(qemu, bytes([1])), daemon=True).start()
        return ours, None

    fwd = vnc.Forwarder(opener, "127.0.0.1", 0, max_failures=3)
    served = _in_thread(fwd.serve)
    yield fwd, served
    fwd.stop()
    for sock in opened:
        sock.close()


def test_the_password_works_once(forwarder: tuple[vnc.Forwarder, dict[str, object]]) -> None:
    fwd, served = forwarder
    port = fwd.address[1]
    with pytest.raises(RFBError, match="authentication failed"):
        _viewer(port, "wrong-pw")
    first = _viewer(port, fwd.password)
    first.sendall(b"\x01hello")  # ClientInit and more: relayed to QEMU and echoed back
    assert vnc.recv_exact(first, 6) == b"\x01hello"
    with pytest.raises(RFBError, match="authentication failed"):
        _viewer(port, fwd.password)  # used up, though the first session still runs
    first.close()
    end = _join(served)
    assert isinstance(end, vnc.SessionEnd)
    assert end.served and end.failures == 2 and not end.stopped


def test_too_many_wrong_passwords_stop_it(
    forwarder: tuple[vnc.Forwarder, dict[str, object]],
) -> None:
    fwd, served = forwarder
    for _ in range(3):
        with pytest.raises(RFBError):
            _viewer(fwd.address[1], "guessing")
    end = _join(served)
    assert isinstance(end, vnc.SessionEnd) and not end.served and end.failures == 3
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", fwd.address[1]), timeout=2)


# ------------------------------------------------------------------ listen addresses
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5901", ("127.0.0.1", 5901)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:5901", ("127.0.0.1", 5901)),
        ("127.0.0.2:5901", ("127.0.0.2", 5901)),
        ("[::1]:5901", ("::1", 5901)),
    ],
)
def test_loopback_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert vnc.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["0.0.0.0:5901", "192.0.2.1:5901", "[::]:5901"])
def test_other_addresses_need_the_flag(text: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        vnc.parse_listen(text)
    assert refused.value.hint and "--allow-remote" in refused.value.hint
    assert "ssh -L" in refused.value.hint
    assert vnc.parse_listen(text, allow_remote=True)[1] == 5901


@pytest.mark.parametrize("text", ["127.0.0.1:http", "127.0.0.1:70000", "example.org:5901"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(InvalidInput):
        vnc.parse_listen(text)


def test_a_port_in_use_is_invalid_input() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(InvalidInput, match="cannot listen"):
            vnc.Forwarder(lambda: (socket.socket(), None), "127.0.0.1", taken.getsockname()[1])


# ------------------------------------------------------------------ displays of definitions
XML = """<domain type='qemu'><name>x</name><memory>65536</memory><devices>
  <graphics type='vnc' socket='/run/x.sock'><listen type='socket' socket='/run/x.sock'/></graphics>
  <graphics type='vnc' port='5905' autoport='no' listen='127.0.0.1' passwd='s3cret'>
    <listen type='address' address='127.0.0.1'/></graphics>
  <graphics type='spice' autoport='yes' port='-1'><listen type='address'/></graphics>
</devices></domain>"""


def test_displays_of_a_definition() -> None:
    found = vnc.displays(Domain.from_xml(XML))
    assert [d.as_dict() for d in found] == [
        {
            "type": "vnc",
            "listen": "socket",
            "address": None,
            "socket": "/run/x.sock",
            "port": None,
            "password": False,
        },
        {
            "type": "vnc",
            "listen": "address",
            "address": "127.0.0.1",
            "socket": None,
            "port": 5905,
            "password": True,
        },
        {
            "type": "spice",
            "listen": "address",
            "address": None,
            "socket": None,
            "port": None,
            "password": False,
        },
    ]
    assert [d.where for d in found] == ["unix:/run/x.sock", "127.0.0.1:5905", "address"]


# ------------------------------------------------------------------ reaching a display
def _conn(uri: str) -> Connection:
    return cast(Connection, SimpleNamespace(uri=uri))


SSH = "qemu+ssh://root@node1/system"


def _tcp(address: str | None, port: int | None = 5901) -> vnc.Display:
    return vnc.Display(0, "vnc", "address", address, None, port, False)


@pytest.mark.parametrize(
    ("uri", "passes"),
    [
        ("qemu:///system", True),
        ("qemu+unix:///system", True),
        (SSH, False),
        ("qemu+tls://node1/system", False),
        ("qemu://node1/system", False),  # TLS by default
    ],
)
def test_descriptors_pass_over_the_local_socket_only(uri: str, passes: bool) -> None:
    assert vnc.passes_descriptors(uri) is passes


@pytest.mark.parametrize(
    ("uri", "display", "expected"),
    [
        (SSH, _tcp("0.0.0.0"), ("node1", 5901)),  # a wildcard: the host's own name
        (SSH, _tcp(None), ("node1", 5901)),
        (SSH, _tcp("192.0.2.7"), ("192.0.2.7", 5901)),
        (SSH, _tcp("node1.example"), ("node1.example", 5901)),
        ("qemu:///system", _tcp("127.0.0.1"), ("127.0.0.1", 5901)),
    ],
)
def test_where_a_tcp_display_is_reached(
    uri: str, display: vnc.Display, expected: tuple[str, int]
) -> None:
    assert vnc._network_address(_conn(uri), "vm", display, "why") == expected


@pytest.mark.parametrize(
    ("display", "said", "tunnel"),
    [
        (vnc.Display(0, "vnc", "socket", None, "/run/v.sock", None, False), "", "5999:/run/v.sock"),
        (_tcp("127.0.0.1"), "loopback only", "5999:127.0.0.1:5901"),
    ],
)
def test_displays_a_remote_connection_cannot_reach(
    display: vnc.Display, said: str, tunnel: str
) -> None:
    with pytest.raises(InvalidState, match=f"could not pass it \\(why\\).*{said}") as refused:
        vnc._network_address(_conn(SSH), "vm", display, "why")
    assert refused.value.hint and f"ssh -L {tunnel}" in refused.value.hint
    assert "node1" in refused.value.hint
