"""``vm create --unattended`` / ``--image``: bad options refused with one clear line, before
anything is made (test driver; the real installs are in tests/integration/test_installs.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmgr.cli.common import state
from kvmgr.cli.main import app

URI = ("-c", "test:///default")


@pytest.fixture(autouse=True)
def _fresh_cli_connection() -> Iterator[None]:
    yield
    state.close()


def _kvmgr(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*URI, *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, " ".join(result.output.split())


def test_cloud_options_need_an_image_and_install_options_an_iso(tmp_path: Path) -> None:
    (tmp_path / "ud.yaml").write_text("#cloud-config\n")
    code, output = _kvmgr(
        "vm", "create", "t-cli-u", "--unattended", "--user-data", str(tmp_path / "ud.yaml")
    )
    assert code == 1 and "--user-data goes with --image --cloud-init" in output
    code, output = _kvmgr("vm", "create", "t-cli-u", "--unattended")
    assert code == 1 and "--unattended needs --iso" in output
    code, output = _kvmgr("vm", "create", "t-cli-c", "--image", "x", "--user", "alice")
    assert code == 1 and "need --cloud-init" in output
    code, output = _kvmgr("vm", "create", "t-cli-c", "--image", "x", "--script", "a.ks")
    assert code == 1 and "--script goes with --unattended" in output
    code, output = _kvmgr("vm", "create", "t-cli-c", "--image", "x", "--product-key", "K")
    assert code == 1 and "--product-key goes with --unattended" in output
    code, output = _kvmgr("vm", "create", "t-cli-c", "--image", "x", "--product-key-file", "k")
    assert code == 1 and "--product-key-file goes with --unattended" in output


def test_the_product_key_can_come_from_a_file(tmp_path: Path) -> None:
    from kvmgr.cli.vm_provision import _product_key
    from kvmgr.errors import InvalidInput, NotFound

    keyfile = tmp_path / "key"
    keyfile.write_text("  ABCDE-FGHIJ-KLMNO-PQRST-UVWXY \n")
    assert _product_key({"product_key_file": str(keyfile)}) == "ABCDE-FGHIJ-KLMNO-PQRST-UVWXY"
    assert _product_key({"product_key": "K"}) == "K"
    assert _product_key({}) is None
    with pytest.raises(InvalidInput, match="not both"):
        _product_key({"product_key": "K", "product_key_file": str(keyfile)})
    with pytest.raises(NotFound, match="product key file"):
        _product_key({"product_key_file": str(tmp_path / "nope")})


def test_named_files_are_checked_first(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    code, output = _kvmgr(
        "vm", "create", "t-cli-c", "--image", "x", "--cloud-init", "--ssh-key", missing
    )
    assert code == 1 and "does not exist" in output
    code, output = _kvmgr(
        "vm", "create", "t-cli-c", "--image", "x", "--cloud-init",
        "--user", "alice", "--password-file", missing,
    )  # fmt: skip
    assert code == 1 and "password file" in output


def test_image_import_refuses_what_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "empty.qcow2").write_bytes(b"")
    code, output = _kvmgr("image", "import", str(tmp_path / "empty.qcow2"), "--os", "linux2022")
    assert code == 1 and "is empty" in output
    code, output = _kvmgr("image", "import", str(tmp_path / "none.qcow2"), "--os", "linux2022")
    assert code == 1 and "none.qcow2" in output
