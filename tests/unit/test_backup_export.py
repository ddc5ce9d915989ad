"""Where a backup job's NBD export listens (kvmgr.services.backup.export), without a daemon."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest
from lxml import etree

from kvmgr.connect import Connection
from kvmgr.errors import InvalidInput, OperationFailed
from kvmgr.services.backup import export


def _conn(uri: str) -> Connection:
    return Connection(uri=uri, virconn=None)  # type: ignore[arg-type]  # plan reads the URI only


def test_local_daemon_uses_a_unix_socket() -> None:
    assert export.plan(_conn("qemu:///system")).local
    assert export.plan(_conn("qemu:///system?socket=/run/x/libvirt-sock")).local


def test_tls_host_gets_tcp_with_the_uris_client_files() -> None:
    planned = export.plan(_conn("qemu+tls://10.250.1.12/system?pkipath=/run/lab/pki/client"))
    assert planned.host == "10.250.1.12"
    assert planned.credentials == export.ClientCredentials(
        Path("/run/lab/pki/client/cacert.pem"),
        Path("/run/lab/pki/client/clientcert.pem"),
        Path("/run/lab/pki/client/clientkey.pem"),
    )
    root = etree.Element("domainbackup")
    export.server_element(root, planned, "", 10811)
    server = root.find("server")
    assert server is not None
    assert dict(server.attrib) == {
        "transport": "tcp", "tls": "yes", "name": "10.250.1.12", "port": "10811"
    }  # fmt: skip


def test_tls_host_without_pkipath_uses_libvirts_default_files() -> None:
    planned = export.plan(_conn("qemu+tls://host.example/system"))
    assert planned.credentials is not None
    assert planned.credentials.cert.name == "clientcert.pem"


@pytest.mark.parametrize("scheme", ["qemu+ssh", "qemu+libssh2"])
def test_ssh_host_is_refused_with_a_hint(scheme: str) -> None:
    with pytest.raises(InvalidInput, match="without TLS") as caught:
        export.plan(_conn(f"{scheme}://root@host.example/system"))
    assert caught.value.hint and "qemu+tls://host.example/system" in caught.value.hint


def test_ports_cover_the_range_from_a_place_of_the_vm() -> None:
    first = export.ports("4dea22b3-1d52-d8f3-2516-782e98ab3fa0")
    other = export.ports("5dea22b3-1d52-d8f3-2516-782e98ab3fa0")
    assert sorted(first) == list(export.PORTS)
    assert first[0] != other[0]  # two VMs start at different ports, so rarely collide


def test_port_taken_is_told_from_other_failures() -> None:
    assert export.port_taken(OperationFailed("Failed to bind socket: Address already in use"))
    assert not export.port_taken(OperationFailed("unable to open /x: Permission denied"))
    err = libvirt.libvirtError("x")
    message = "internal error: Failed to bind socket: Address already in use"
    err.err = (1, 0, message, 0, "", "", None, 0, 0)
    assert export.port_taken(err)


def test_scratch_files_of_a_remote_job_lie_beside_its_disks() -> None:
    planned = export.plan(_conn("qemu+tls://h/system"))
    path = export.scratch_file(planned, "", "vm.20261201T000000Z", "vda", "/images/vm.qcow2")
    assert path == f"/images/vm.qcow2{export.SCRATCH_MARK}vm.20261201T000000Z"
    local = export.scratch_file(export.plan(_conn("qemu:///system")), "/var/tmp/kvmgr-backup-x",
                                "p", "vda", "/images/vm.qcow2")  # fmt: skip
    assert local == "/var/tmp/kvmgr-backup-x/vda.scratch"
