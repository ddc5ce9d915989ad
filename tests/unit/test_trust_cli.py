"""Issue 11 hole 1 on the CLI: the same kvmgr.control.authz checks as the API (test driver)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmgr.cli.main import app

URI = "test:///default"


@pytest.fixture(autouse=True)
def private_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMGR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KVMGR_DB_URL", f"sqlite:///{tmp_path / 'kvmgr.db'}")


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["-c", URI, *args])
    return result.exit_code, result.output


def test_cli_refuses_system_files_as_disks_even_through_a_symlink(tmp_path: Path) -> None:
    link = tmp_path / "disk.img"
    link.symlink_to("/etc/shadow")
    for disk in ("/etc/shadow", str(link), f"{tmp_path}/../../../../etc/shadow"):
        code, output = _run("vm", "create", "t-cli-trust", "--disk", f"path={disk}",
                            "--network", "none", "--no-start", "--graphics", "none")  # fmt: skip
        assert code == 1, output
        assert "system directory /etc" in output
    code, output = _run("vm", "list")
    assert "t-cli-trust" not in output


def test_cli_refuses_pools_on_system_directories(tmp_path: Path) -> None:
    link = tmp_path / "etc-link"
    link.symlink_to("/etc")
    for path in ("/etc", "/", str(link), "/var/lib/kvmgr"):
        code, output = _run("pool", "create", "t-cli-trust-p", "--path", path)
        assert code == 1, (path, output)
        assert "system directory" in output


def test_cli_refuses_to_import_a_system_file_as_an_iso(tmp_path: Path) -> None:
    link = tmp_path / "setup.iso"
    link.symlink_to("/etc/passwd")
    for path in ("/etc/passwd", str(link)):
        code, output = _run("iso", "import", path, "--name", "t-cli-trust-iso")
        assert code == 1, (path, output)
        assert "system directory /etc" in output


def test_cli_relative_paths_are_resolved_and_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shadow.iso").symlink_to("/etc/shadow")
    (tmp_path / "disk.img").symlink_to("/etc/shadow")
    monkeypatch.chdir(tmp_path)
    for option in (["--iso", "shadow.iso", "--disk", "none"], ["--disk", "path=disk.img"]):
        code, output = _run("vm", "create", "t-cli-trust", *option, "--network", "none",
                            "--no-start", "--graphics", "none")  # fmt: skip
        assert code == 1, (option, output)
        assert "system directory /etc" in output, option


DOMAIN = """<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>
<os><type>hvm</type></os><devices><disk type='file' device='{device}'>
<source file='{path}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""


@pytest.mark.parametrize("device", ["disk", "cdrom"])
def test_cli_define_refuses_system_files_in_the_xml(tmp_path: Path, device: str) -> None:
    link = tmp_path / "disk.img"
    link.symlink_to("/etc/shadow")
    for path in ("/etc/shadow", str(link)):
        xml = tmp_path / "vm.xml"
        xml.write_text(DOMAIN.format(name="t-cli-trust-def", device=device, path=path))
        code, output = _run("vm", "define", str(xml))
        assert code == 1, (path, output)
        assert "system directory /etc" in output
    assert "t-cli-trust-def" not in _run("vm", "list")[1]


def test_cli_edit_keeps_a_templates_own_disks_but_refuses_new_system_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import libvirt

    from kvmgr.connect import open_connection
    from kvmgr.services import clones

    name, own = "t-cli-trust-edit", "/default-pool/t-cli-trust-own.img"
    conn = libvirt.open(URI)
    conn.defineXML(DOMAIN.format(name=name, device="disk", path=own))
    try:
        with open_connection(URI) as kconn:
            clones.mark_template(kconn, name)  # its disk may be attached nowhere else
        code, output = _run("vm", "disk", "add", "test", "--path", own)
        assert code == 1 and "template" in output, output
        editor = tmp_path / "editor.sh"
        monkeypatch.setenv("EDITOR", str(editor))
        editor.write_text(f"#!/bin/sh\nsed -i 's|{own}|/etc/shadow|' \"$1\"\n")
        editor.chmod(0o755)
        code, output = _run("vm", "edit", name)
        assert code == 1 and "system directory /etc" in output, output
        editor.write_text("#!/bin/sh\nsed -i 's|</name>|</name><title>t</title>|' \"$1\"\n")
        code, output = _run("vm", "edit", name)  # the template's own disk stays in it
        assert code == 0 and "definition changed" in output, output
    finally:
        conn.lookupByName(name).undefine()
        conn.close()


def test_cli_refuses_to_import_a_system_file_as_a_cloud_image(tmp_path: Path) -> None:
    link = tmp_path / "cloud.qcow2"
    link.symlink_to("/etc/shadow")
    for path in ("/etc/shadow", str(link)):
        code, output = _run("image", "import", path, "--os", "generic", "--name", "t-cli-trust")
        assert code == 1, (path, output)
        assert "system directory /etc" in output
