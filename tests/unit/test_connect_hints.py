"""A failed connection's hint fits its transport and what libvirt said (issue 16 item 8): an SSH
failure never asks whether libvirtd runs, even to 127.0.0.1.  Messages are libvirt's own."""

from __future__ import annotations

import pytest

from kvmgr.connect.connection import _connect_hint

CASES = [
    (
        "qemu:///system",
        "Failed to connect socket to '/run/libvirt/libvirt-sock'",
        "libvirtd running",
    ),
    (
        "qemu+ssh://root@127.0.0.1:1/system",
        "Cannot recv data: ssh: connect to host 127.0.0.1 port 1: Connection refused",
        "sshd",
    ),
    (
        "qemu+ssh://root@node1/system",
        "Cannot recv data: Host key verification failed.: Connection reset by peer",
        "ssh USER@HOST",
    ),
    (
        "qemu+ssh://root@node1/system",
        "Cannot recv data: root@node1: Permission denied (publickey,password).",
        "key",
    ),
    (
        "qemu+ssh://root@node1/system",
        "Cannot recv data: sh: 1: nc: not found: Connection reset by peer",
        "virt-ssh-helper",
    ),
    (
        "qemu+tls://node1/system",
        "Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory",
        "pkipath",
    ),
    (
        "qemu+tcp://node1/system",
        "unable to connect to server at 'node1:16509': Connection refused",
        "listen_tcp",
    ),
]


@pytest.mark.parametrize(("uri", "said", "expected"), CASES)
def test_hint_fits_the_transport(uri: str, said: str, expected: str) -> None:
    hint = _connect_hint(uri, said)
    assert expected in hint
    if "+" in uri:
        assert "libvirtd running" not in hint
