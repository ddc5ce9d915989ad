"""What an interface shows for an error a service let through (kvmgr.errors.at_the_boundary)."""

from __future__ import annotations

import libvirt

from kvmgr.errors import ConnectionFailed, InvalidInput, OperationFailed, at_the_boundary


def _libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    err = libvirt.libvirtError(message)
    err.err = (code, 0, message, 0, "", None, None, 0, 0)
    return err


def test_a_dropped_connection_says_so_and_what_to_do() -> None:
    err = at_the_boundary(_libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "client socket is closed"))
    assert isinstance(err, ConnectionFailed)
    assert "lost the connection" in err.message and err.hint and "again" in err.hint


def test_another_libvirt_error_is_an_operation_failure() -> None:
    err = at_the_boundary(_libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "qemu said no"))
    assert isinstance(err, OperationFailed) and "qemu said no" in err.message


def test_file_errors_and_nul_bytes() -> None:
    err = at_the_boundary(PermissionError(13, "Permission denied", "/root/x.iso"))
    assert err is not None and "/root/x.iso" in err.message and "Permission denied" in err.message
    assert isinstance(at_the_boundary(ValueError("embedded null byte")), InvalidInput)


def test_bugs_are_not_hidden() -> None:
    assert at_the_boundary(KeyError("x")) is None
    assert at_the_boundary(ValueError("something else")) is None
