"""ifcfg and netplan executors run for real against a temporary root, links in test namespaces.

What is real: every file write, backup, restore and removal under a temporary root holding copies
of realistic configuration files; every ``ip`` read and change inside a network namespace
``kvmgr-t-host2-…`` this test creates (uplink ``up0``, a veth whose peer sits in a second
namespace as the gateway 10.232.1.1, so ``--ping`` really crosses the bridge); the verification
and the rollback checks.

Also real: ``netplan generate`` (Debian's netplan.io) parses the YAML kvmgr wrote, under the
temporary root, each time kvmgr would run ``netplan apply``; the bridge counts as configured only
when netplan itself rendered a networkd ``Kind=bridge`` netdev for it with the uplink enslaved.

What is not: ``netplan apply``, ``ifup`` and ``ifdown`` would act on this machine's real network
(and Debian's ifup reads /etc/network/interfaces, not ifcfg files).  Those "bring live" commands
go to :class:`NetworkService`, which records them and reproduces the effect the real tool would
have on the namespace: when the bridge is configured, it creates it with the real ``ip``
commands of the iproute2 backend; when it is not, it puts the uplink back.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmgr.cli.main import app
from kvmgr.errors import HostError
from kvmgr.host.bridge import create_bridge, delete_bridge, list_bridges
from kvmgr.host.bridge_backends import Settle
from kvmgr.host.bridge_ip import Ip, LinkState, plan_create, plan_restore
from kvmgr.host.bridge_plans import STATE_DIR, Runner, under

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent.parent / "data" / "bridge-backends"
BRIDGE = "t-host2-br0"
GATEWAY = "10.232.1.1"
NOBODY = "10.232.1.99"  # in the subnet, but nothing answers it
QUICK = Settle(timeout=2.0, interval=0.2)
BRIDGE_FILE = {
    "netplan": f"/etc/netplan/90-kvmgr-{BRIDGE}.yaml",
    "ifcfg": f"/etc/sysconfig/network-scripts/ifcfg-{BRIDGE}",
}
LIVE_PROGRAMS = ("netplan", "ifup", "ifdown")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=15, capture_output=True)


@dataclass
class Lab:
    netns: str
    gateway_ns: str
    root: Path
    uplink: str = "up0"

    @property
    def ip(self) -> Ip:
        return Ip(self.netns)

    def state(self) -> LinkState:
        return self.ip.read(self.uplink)


class NetworkService(Runner):
    """Records the bring-live commands and reproduces their effect in the namespace (see the
    module docstring); every other command runs for real."""

    def __init__(self, lab: Lab, backend: str, *, works: bool = True) -> None:
        super().__init__(timeout=30)
        self.lab, self.backend, self.works = lab, backend, works
        self.original = lab.state()
        self.calls: list[tuple[str, ...]] = []

    def __call__(
        self, argv: tuple[str, ...], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        if argv[0] not in LIVE_PROGRAMS:
            return super().__call__(argv, check=check)
        self.calls.append(argv)
        if argv in (("netplan", "apply"), ("ifup", self.lab.uplink)):
            self._reload()
        return subprocess.CompletedProcess(list(argv), 0, "", "")

    def _configured(self) -> bool:
        if self.backend != "netplan":
            return under(self.lab.root, BRIDGE_FILE[self.backend]).exists()
        rendered = netplan_generate(self.lab.root)
        netdev = rendered.get(f"10-netplan-{BRIDGE}.netdev", "")
        uplink = rendered.get(f"10-netplan-{self.lab.uplink}.network", "")
        if f"Name={BRIDGE}" in netdev:
            assert "Kind=bridge" in netdev
            assert f"Bridge={BRIDGE}" in uplink, uplink  # the uplink is enslaved, by netplan
            return True
        return False

    def _reload(self) -> None:
        ip = self.lab.ip
        configured = self._configured()
        if configured and self.works and not ip.link_exists(BRIDGE):
            for step in plan_create(self.original, BRIDGE):
                ip.run(step)
        elif not configured:
            for step in plan_restore(self.original, ip):
                ip.run(step)


def netplan_generate(root: Path) -> dict[str, str]:
    """Run the real ``netplan generate`` on ``root``; the networkd files it rendered, by name.

    Its output (under root/run) is removed again: it is netplan's, not part of what kvmgr wrote.
    """
    if shutil.which("netplan") is None:
        pytest.fail("netplan.io is not installed: scripts/install-test-deps.sh installs it")
    done = subprocess.run(
        ["netplan", "generate", "--root-dir", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"netplan refused kvmgr's files: {done.stderr}"
    out = root / "run" / "systemd" / "network"
    rendered = {path.name: path.read_text() for path in out.glob("*")} if out.exists() else {}
    shutil.rmtree(root / "run", ignore_errors=True)
    return rendered


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:6]
    lab = Lab(f"kvmgr-t-host2-{tag}", f"kvmgr-t-host2-{tag}-gw", tmp_path / "root")
    try:
        _ip("netns", "add", lab.netns)
        _ip("netns", "add", lab.gateway_ns)
        _ip("-n", lab.netns, "link", "add", lab.uplink, "type", "veth", "peer", "name", "gw0")
        _ip("-n", lab.netns, "link", "set", "gw0", "netns", lab.gateway_ns)
        _ip("-n", lab.netns, "link", "set", "lo", "up")
        _ip("-n", lab.netns, "link", "set", lab.uplink, "up")
        _ip("-n", lab.gateway_ns, "link", "set", "gw0", "up")
        _ip("-n", lab.gateway_ns, "address", "add", f"{GATEWAY}/24", "dev", "gw0")
        _ip("-n", lab.netns, "address", "add", "10.232.1.2/24", "dev", lab.uplink)
        _ip("-n", lab.netns, "route", "add", "default", "via", GATEWAY)
        yield lab
    finally:
        for name in (lab.netns, lab.gateway_ns):
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=15)


def _stage(lab: Lab, backend: str) -> Path:
    """Copy the fixture tree to the lab's root; a pristine copy stays alongside to compare with."""
    shutil.copytree(DATA / backend, lab.root)
    pristine = lab.root.with_name("pristine")
    shutil.copytree(DATA / backend, pristine)
    for path in (lab.root / "etc" / "netplan").glob("*.yaml"):
        path.chmod(0o600)  # netplan's own mode; git keeps only the executable bit
    return pristine


def _same_tree(left: Path, right: Path) -> bool:
    """Same files, byte for byte, and nothing more on either side."""
    names = {p.relative_to(left) for p in left.rglob("*") if p.is_file()}
    if names != {p.relative_to(right) for p in right.rglob("*") if p.is_file()}:
        return False
    return all(filecmp.cmp(left / n, right / n, shallow=False) for n in names)


@pytest.mark.parametrize("backend", ["netplan", "ifcfg"])
def test_create_writes_golden_files_with_backups_and_delete_restores_bytes(
    lab: Lab, backend: str
) -> None:
    pristine = _stage(lab, backend)
    before = lab.state()
    service = NetworkService(lab, backend)

    result = create_bridge(
        BRIDGE,
        lab.uplink,
        netns=lab.netns,
        yes=True,
        ping=GATEWAY,
        backend="auto",
        root=lab.root,
        runner=service,
        settle=QUICK,
    )

    assert result.backend == backend  # detected from the files, not forced
    for path, content in result.files.items():
        target = under(lab.root, path)
        assert (not target.exists()) if content is None else target.read_text() == content
    backups = under(lab.root, f"{STATE_DIR}/{BRIDGE}/files")
    changed = [p for p in result.files if under(pristine, p).exists()]
    assert changed
    for path in changed:  # every file changed has an exact copy of what it was
        assert filecmp.cmp(under(backups, path), under(pristine, path), shallow=False)
    assert [(r["name"], r["kvmgr"]) for r in list_bridges(netns=lab.netns, root=lab.root)] == [
        (BRIDGE, True)  # no alias from netplan/ifup: kvmgr's record says it made the bridge
    ]
    bridge = lab.ip.read(BRIDGE)
    assert {a.cidr for a in bridge.addresses} == {a.cidr for a in before.addresses}
    assert service.calls[-1] == (("netplan", "apply") if backend == "netplan" else ("ifup", BRIDGE))

    service.calls.clear()
    deleted = delete_bridge(
        BRIDGE, netns=lab.netns, yes=True, root=lab.root, runner=service, settle=QUICK
    )

    assert deleted.backend == backend
    assert _same_tree(lab.root, pristine)  # backups gone too: nothing of kvmgr's left
    assert not lab.ip.link_exists(BRIDGE)
    assert lab.state() == before
    assert service.calls == ([("netplan", "apply")] if backend == "netplan" else [("ifup", "up0")])


@pytest.mark.parametrize("backend", ["netplan", "ifcfg"])
@pytest.mark.parametrize("failure", ["never-up", "no-ping"])
def test_failed_check_restores_every_file_byte_for_byte(
    lab: Lab, backend: str, failure: str
) -> None:
    pristine = _stage(lab, backend)
    before = lab.state()
    service = NetworkService(lab, backend, works=failure != "never-up")

    with pytest.raises(HostError) as err:
        create_bridge(
            BRIDGE,
            lab.uplink,
            netns=lab.netns,
            yes=True,
            ping=NOBODY,
            ping_timeout=1,
            backend=backend,
            root=lab.root,
            runner=service,
            settle=QUICK,
        )

    assert "restored as they were" in err.value.message
    assert _same_tree(lab.root, pristine)
    assert not lab.ip.link_exists(BRIDGE)
    assert lab.state() == before
    undo = ("netplan", "apply") if backend == "netplan" else ("ifup", "up0")
    assert service.calls[-1] == undo  # the old configuration was brought live again


def test_dry_run_writes_nothing_and_prints_files_and_argv(lab: Lab) -> None:
    pristine = _stage(lab, "netplan")
    result = CliRunner().invoke(
        app,
        [
            "host",
            "bridge",
            "create",
            BRIDGE,
            "--uplink",
            lab.uplink,
            "--netns",
            lab.netns,
            "--root",
            str(lab.root),
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "backend: netplan" in result.output
    assert f"would write /etc/netplan/90-kvmgr-{BRIDGE}.yaml:" in result.output
    assert "      interfaces:\n      - up0\n" in result.output  # the full file content
    assert "  netplan apply\n" in result.output
    assert _same_tree(lab.root, pristine)
    assert not lab.ip.link_exists(BRIDGE)


def test_cli_backend_override_and_refusals(lab: Lab) -> None:
    _stage(lab, "netplan")
    runner = CliRunner()
    base = ["host", "bridge", "create", BRIDGE, "--uplink", lab.uplink, "--netns", lab.netns]
    forced = runner.invoke(
        app, [*base, "--root", str(lab.root), "--backend", "iproute2", "--dry-run", "-o", "json"]
    )
    assert forced.exit_code == 0, forced.output
    assert '"backend": "iproute2"' in forced.output and "link add name" in forced.output
    no_nm = runner.invoke(app, [*base, "--backend", "nmcli", "--dry-run"])
    assert no_nm.exit_code == 1 and "NetworkManager is not running" in no_nm.output
    refused = runner.invoke(app, [*base, "--root", str(lab.root)])
    assert refused.exit_code == 1 and "--yes" in refused.output
    bad = runner.invoke(app, [*base, "--backend", "systemd", "--dry-run"])
    assert bad.exit_code == 2
