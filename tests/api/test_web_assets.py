"""Every vendor library a page of the web UI loads is installed, so consoles and API docs work.

`make demo` used to skip the npm libraries (only `make test` installed them) and `kvmgr serve`
then served console pages whose scripts answered 404.  Every install path now runs
scripts/install-web-ui.sh; this test fails when a page names a vendor file that is not there.
"""

from __future__ import annotations

import re
from pathlib import Path

import kvmgr

WEB = Path(kvmgr.__file__).parent / "web"
VENDOR_REF = re.compile(r"vendor/[A-Za-z0-9_./-]+\.(?:js|css)")


def _referenced_vendor_files() -> set[str]:
    sources = [*WEB.glob("templates/*.html"), *WEB.glob("static/*.js")]
    return {ref for path in sources for ref in VENDOR_REF.findall(path.read_text())}


def test_pages_name_vendor_files() -> None:
    # The consoles (xterm.js, noVNC) and the API docs (Swagger UI) are all among them.
    refs = _referenced_vendor_files()
    assert any("xterm" in ref for ref in refs)
    assert any("novnc" in ref for ref in refs)
    assert any("swagger" in ref for ref in refs)


def test_every_referenced_vendor_file_is_installed() -> None:
    missing = sorted(
        ref for ref in _referenced_vendor_files() if not (WEB / "static" / ref).is_file()
    )
    assert not missing, f"run scripts/install-web-ui.sh: missing {missing}"


def test_every_install_path_installs_the_web_libraries() -> None:
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    setup = next(line for line in makefile.splitlines() if line.startswith("setup:"))
    assert "web-ui" in setup.split(), "make setup (and so make demo) must install the web UI"
