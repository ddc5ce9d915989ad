"""An ISO QEMU cannot reach is refused before anything is made, with what to do; ``--import``
copies it into the ISO library and the VM is created (issue 16 item 5), on the real daemon."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from typer.testing import CliRunner

from kvmgr.cli.common import state
from kvmgr.cli.main import app
from kvmgr.connect import Connection
from kvmgr.host.qemu_access import QemuIdentity, qemu_identity, why_qemu_cannot_read
from tests.integration.conftest import Cleanup

PREFIX = "t-isoacc-"


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KVMGR_STATE_DIR", str(tmp_path / "state"))
    yield
    state.close()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's own tmp dirs are 0700 to others)."""
    base = Path(tempfile.mkdtemp(prefix="kvmgr-t-isoacc-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def hidden_iso(demo_iso: Path, open_dir: Path) -> Path:
    """The demo ISO in a 0700 directory, as a file in /root would be."""
    private = open_dir / "private"
    private.mkdir()
    iso = private / f"{PREFIX}demo.iso"
    iso.write_bytes(demo_iso.read_bytes())
    private.chmod(0o700)
    return iso


def kvmgr(*argv: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["-c", "qemu:///system", *argv])
    state.close()
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_unreachable_iso_is_refused_before_anything_is_made(
    conn: Connection, hidden_iso: Path, cleanup: Cleanup
) -> None:
    cleanup.prefix(PREFIX)
    who = qemu_identity()
    assert who is not None, "libvirt's QEMU user exists on a host with libvirt installed"
    reason = why_qemu_cannot_read(str(hidden_iso))
    assert reason is not None and str(hidden_iso.parent) in reason
    code, out = kvmgr("vm", "create", f"{PREFIX}vm", "--iso", str(hidden_iso), "--no-start")
    assert code == 1
    flat = " ".join(out.split())
    assert "cannot enter" in flat and "--import" in flat
    with pytest.raises(libvirt.libvirtError):
        conn.virconn.lookupByName(f"{PREFIX}vm")  # nothing was defined


def test_import_copies_it_into_the_library_and_creates_the_vm(
    conn: Connection, hidden_iso: Path, cleanup: Cleanup
) -> None:
    cleanup.prefix(PREFIX)
    code, out = kvmgr(
        "vm", "create", f"{PREFIX}vm", "--iso", str(hidden_iso), "--import", "--no-start"
    )
    assert code == 0, out
    assert "imported" in out
    dom = conn.virconn.lookupByName(f"{PREFIX}vm")
    xml = dom.XMLDesc(0)
    assert str(hidden_iso) not in xml  # the library's copy, which QEMU can read
    assert f"{PREFIX}demo.iso" in xml
    assert why_qemu_cannot_read(str(hidden_iso)) is not None  # the original is untouched


def test_the_rule_on_modes(open_dir: Path) -> None:
    nobody = QemuIdentity(uid=54321, gids=frozenset({54321}), name="q", dynamic_ownership=False)
    image = open_dir / "a.iso"
    image.write_bytes(b"x")
    image.chmod(0o644)
    assert all(p.stat().st_mode & stat.S_IXOTH for p in open_dir.parents)
    assert why_qemu_cannot_read(str(image), nobody) is None
    image.chmod(0o600)
    assert "cannot read" in str(why_qemu_cannot_read(str(image), nobody))
    dynamic = QemuIdentity(54321, frozenset({54321}), "q", dynamic_ownership=True)
    assert why_qemu_cannot_read(str(image), dynamic) is None  # libvirt hands the file over
    open_dir.chmod(0o700)
    assert "cannot enter" in str(why_qemu_cannot_read(str(image), dynamic))
    open_dir.chmod(0o755)
    assert os.access(image, os.R_OK)
