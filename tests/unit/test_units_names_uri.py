"""Parsing of what users type: sizes, names, libvirt URIs; and libvirt error translation."""

from __future__ import annotations

import libvirt
import pytest

from kvmgr.connect import open_connection, validate_uri
from kvmgr.errors import (
    AlreadyExists,
    ConnectionFailed,
    InvalidInput,
    InvalidState,
    NotFound,
    translate,
)
from kvmgr.names import validate_name
from kvmgr.units import GIB, MIB, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", 512 * MIB),
        ("2G", 2 * GIB),
        ("20GiB", 20 * GIB),
        ("1.5G", int(1.5 * GIB)),
        ("2GB", 2 * 1000**3),
        ("4096", 4096),
        (" 8 g ", 8 * GIB),
    ],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_default_unit_applies_to_bare_numbers() -> None:
    assert parse_size("20", default_unit="G") == 20 * GIB
    assert parse_size("20M", default_unit="G") == 20 * MIB


@pytest.mark.parametrize("text", ["0", "0G", "-1G", "G", "two", "5X", "1e9", ""])
def test_bad_sizes_say_what_to_type(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_size(text, what="memory")
    assert "memory" in str(caught.value)


def test_format_size() -> None:
    assert format_size(2 * GIB) == "2 GiB"
    assert format_size(1536 * MIB) == "1.5 GiB"
    assert format_size(100) == "100 B"


@pytest.mark.parametrize("name", ["web01", "db_1", "a", "x.y-z", "A" * 64, "9lives"])
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-x", ".hidden", "a/b", "a b", "A" * 65, "x<y", "naïve", "../etc", "x\n"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate_name(name, what="VM name")


@pytest.mark.parametrize(
    "uri",
    [
        "qemu:///system",
        "qemu:///session",
        "qemu+ssh://root@host.example/system",
        "qemu+tcp://10.0.0.5/system",
        "test:///default",
        "test:///tmp/node.xml",
    ],
)
def test_good_uris(uri: str) -> None:
    assert validate_uri(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "xen:///system",
        "qemu://",
        "qemu:///nothing",
        "qemu+ssh:///system",
        "http://x/system",
        "test://",
    ],
)
def test_bad_uris(uri: str) -> None:
    with pytest.raises(InvalidInput):
        validate_uri(uri)


def test_unreachable_daemon_is_one_clear_error(tmp_path: object) -> None:
    with pytest.raises(ConnectionFailed) as caught:
        open_connection("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    assert "cannot connect" in caught.value.message
    assert caught.value.hint


def _libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    """A real libvirtError raised by the test driver for the given situation."""
    err = libvirt.libvirtError(message)
    err.err = (code, 0, message, 0, None, None, None, 0, 0)
    return err


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (libvirt.VIR_ERR_NO_DOMAIN, NotFound),
        (libvirt.VIR_ERR_OPERATION_INVALID, InvalidState),
        (libvirt.VIR_ERR_XML_ERROR, InvalidInput),
        (libvirt.VIR_ERR_DOM_EXIST, AlreadyExists),
    ],
)
def test_libvirt_errors_become_ours(code: int, kind: type) -> None:
    err = translate(_libvirt_error(code, "something"), "doing a thing")
    assert isinstance(err, kind)
    assert err.message.startswith("doing a thing failed")


def test_real_driver_error_is_translated() -> None:
    conn = open_connection("test:///default")
    try:
        conn.virconn.lookupByName("missing")
    except libvirt.libvirtError as raw:
        assert isinstance(translate(raw, "looking up"), NotFound)
    else:
        pytest.fail("the test driver should not know 'missing'")
