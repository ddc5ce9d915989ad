"""kvmgr's NBD client over TCP with TLS, against a real ``qemu-nbd --tls-creds`` server.

The server is QEMU's own (the same NBD server code a remote backup job runs), with x509
credentials from a CA made as the lab makes its own (kvmgr.host.lab_pki) and ``verify-peer``
on, so the client must present a certificate of that CA.  Checked: the handshake upgrades to
TLS, block status and pipelined reads return the image's data, and a client without TLS, with
a certificate of another CA, or expecting another server name is refused.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmgr.host import lab_pki
from kvmgr.services.backup import nbd
from kvmgr.services.backup.export import ClientCredentials

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-nbd") and shutil.which("openssl")), reason="needs qemu-nbd, openssl"
)

SIZE = 4 * 1024 * 1024
EXPORT = "disk"


def _credentials(root: Path, name: str) -> tuple[Path, ClientCredentials]:
    """A CA, a server directory as QEMU's tls-creds-x509 wants it, and client files."""
    ca = lab_pki.make_ca(root / "ca", name)
    server = root / "server"
    lab_pki.issue(ca, server / "server-cert.pem", server / "server-key.pem",
                  common_name="localhost", purpose="serverAuth",
                  addresses=["127.0.0.1"], names=["localhost"])  # fmt: skip
    shutil.copy(ca[0], server / "ca-cert.pem")
    client = root / "client"
    lab_pki.issue(ca, client / lab_pki.CLIENT_CERT, client / lab_pki.CLIENT_KEY,
                  common_name="kvmgr", purpose="clientAuth")  # fmt: skip
    shutil.copy(ca[0], client / lab_pki.CA_CERT)
    return server, ClientCredentials(
        client / lab_pki.CA_CERT, client / lab_pki.CLIENT_CERT, client / lab_pki.CLIENT_KEY
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ClientCredentials]]:
    root = tmp_path_factory.mktemp("nbd-tls")
    server_dir, client = _credentials(root, "nbd-test")
    image = root / "disk.raw"
    with image.open("wb") as out:
        out.truncate(SIZE)
        out.seek(1024 * 1024)
        out.write(bytes(range(256)) * 1024)  # 256 KiB of data at 1 MiB; the rest is a hole
    port = _free_port()
    proc = subprocess.Popen(
        ["qemu-nbd", "--object",
         f"tls-creds-x509,id=tls0,dir={server_dir},endpoint=server,verify-peer=on",
         "--tls-creds", "tls0", "-b", "127.0.0.1", "-p", str(port), "-x", EXPORT,
         "-f", "raw", "--persistent", "--shared=4", "-r", str(image)],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"qemu-nbd did not start: {proc.communicate()[1].decode()}")
            time.sleep(0.05)
    yield port, client
    proc.terminate()
    proc.wait(10)


def test_tls_handshake_block_status_and_reads(server: tuple[int, ClientCredentials]) -> None:
    port, client = server
    with nbd.NBDClient(
        ("127.0.0.1", port), EXPORT, [nbd.ALLOCATION], tls=client.context(), timeout=10
    ) as conn:
        assert conn.tls_version is not None and conn.tls_version.startswith("TLS")
        assert conn.size == SIZE
        data = [e for e in conn.extents(nbd.ALLOCATION) if not e.flags & nbd.STATE_ZERO]
        assert data and data[0].offset <= 1024 * 1024
        assert sum(e.length for e in data) < SIZE  # the holes were described as holes
        first, second = conn.read_many([(1024 * 1024, 128 * 1024), (1024 * 1024 + 131072, 4096)])
        assert bytes(first) == bytes(range(256)) * 512
        assert bytes(second) == bytes(range(256)) * 16


def test_plain_client_is_told_tls_is_required(server: tuple[int, ClientCredentials]) -> None:
    port, _ = server
    with pytest.raises(nbd.NBDError, match="requires TLS"):
        nbd.NBDClient(("127.0.0.1", port), EXPORT, [nbd.ALLOCATION], timeout=10)


def test_certificate_of_another_ca_is_refused(
    server: tuple[int, ClientCredentials], tmp_path: Path
) -> None:
    port, good = server
    _, stranger = _credentials(tmp_path, "stranger")
    # our CA, the stranger's client certificate: the server refuses it (verify-peer)
    mixed = ClientCredentials(good.ca, stranger.cert, stranger.key)
    with (
        pytest.raises((nbd.NBDError, OSError)),
        nbd.NBDClient(
            ("127.0.0.1", port), EXPORT, [nbd.ALLOCATION], tls=mixed.context(), timeout=10
        ) as conn,
    ):
        list(conn.read_many([(0, 4096)]))  # TLS 1.3: the refusal may come with the first read
    # the stranger's CA: the client refuses the server
    with pytest.raises(nbd.NBDError, match="TLS handshake"):
        nbd.NBDClient(
            ("127.0.0.1", port), EXPORT, [nbd.ALLOCATION], tls=stranger.context(), timeout=10
        )


def test_server_name_is_checked(server: tuple[int, ClientCredentials]) -> None:
    port, client = server
    with pytest.raises(nbd.NBDError, match="TLS handshake"):
        nbd.NBDClient(("127.0.0.1", port), EXPORT, [nbd.ALLOCATION], tls=client.context(),
                      server_name="elsewhere.example", timeout=10)  # fmt: skip


def test_missing_client_files_get_a_hint(tmp_path: Path) -> None:
    from kvmgr.errors import InvalidInput

    files = ClientCredentials(tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(InvalidInput, match="missing") as caught:
        files.context()
    assert caught.value.hint and "pkipath" in caught.value.hint
    assert os.path.basename(str(files.ca)) in str(caught.value)
