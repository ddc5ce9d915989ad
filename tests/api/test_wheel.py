"""A wheel built from the repository is a complete product: installed into a fresh venv, its
``kvmgr serve`` serves every web library the pages load (consoles, API docs) and the templates.

The wheel's dependencies come from the project's own venv (a ``.pth`` file), so the test needs
no network; kvmgr itself is imported from the fresh venv only.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parents[2]
VENDOR_REF = re.compile(r"vendor/[A-Za-z0-9_./-]+\.(?:js|css)")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # A copy of the sources, so the build leaves nothing (egg-info, build/) in the checkout.
    subprocess.run(
        [
            "cp",
            "-rL",
            "--",
            str(ROOT / "src"),
            str(ROOT / "pyproject.toml"),
            str(ROOT / "README.md"),
            str(build),
        ],
        check=True,
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(build)],
        check=True,
        timeout=300,
    )
    (found,) = out.glob("kvmgr-*.whl")
    return found


def test_wheel_has_web_libraries_templates_and_guest_files_but_not_npm_tree(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    referenced = _referenced_vendor_files()
    assert referenced
    missing = [ref for ref in referenced if f"kvmgr/web/static/{ref}" not in names]
    assert not missing, f"run scripts/install-web-ui.sh before building: {missing}"
    assert "kvmgr/images/guest/inittab" in names
    assert "kvmgr/store/migrations/versions/0001_baseline.py" in names
    assert not [name for name in names if "node_modules" in name]


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # Dependencies from this venv's site-packages, appended after the fresh venv's own.
    (purelib / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(purelib),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    return venv


@pytest.fixture(scope="module")
def server(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(KVMGR_STATE_DIR=str(tmp_path_factory.mktemp("state")), KVMGR_URI="test:///default")
    code = "from kvmgr.cli.main import run; import sys; sys.argv[0] = 'kvmgr'; run()"
    process = subprocess.Popen(
        [str(installed / "bin" / "python"), "-c", code, "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        cwd=installed,  # not the checkout: kvmgr must come from the fresh venv
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_installed_kvmgr_comes_from_the_wheel(installed: Path) -> None:
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import kvmgr; print(kvmgr.__file__)"],
        env={"PATH": os.environ["PATH"]},
        cwd=installed,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(installed)), where


def test_installed_server_serves_every_web_library(server: str) -> None:
    for ref in sorted(_referenced_vendor_files()):
        answer = httpx.get(f"{server}/static/{ref}")
        assert answer.status_code == 200, ref
        assert len(answer.content) > 100, ref
    login = httpx.get(f"{server}/login")
    assert login.status_code == 200 and "<form" in login.text


def _referenced_vendor_files() -> set[str]:
    web = ROOT / "src" / "kvmgr" / "web"
    sources = [*web.glob("templates/*.html"), *web.glob("static/*.js")]
    return {ref for path in sources for ref in VENDOR_REF.findall(path.read_text())}


def _wait_until_up(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"kvmgr serve exited: {output}")
        try:
            httpx.get(f"{base}/login", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("kvmgr serve did not answer within 30 s")
