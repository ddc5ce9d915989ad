"""The nmcli backend against a real NetworkManager, in a network namespace this test creates.

What is real: Debian's NetworkManager 1.4x daemon, its own ``dbus-daemon`` (a private system bus
whose socket is in the test's temporary directory), every ``nmcli`` command kvmgr runs (kvmgr is
started as a subprocess whose environment carries ``DBUS_SYSTEM_BUS_ADDRESS``, exactly as an admin
pointing nmcli at a bus would), the keyfiles NetworkManager writes, the links, addresses and routes
it configures, and the ping across the bridge to a gateway in a second namespace.

How NetworkManager is confined: it runs under ``ip netns exec`` (it sees only the test's links)
and ``unshare -m`` with private mounts over /etc/NetworkManager, /var/lib/NetworkManager and /run,
and ``dns=none`` / ``hostname-mode=none`` so it writes neither /etc/resolv.conf nor the hostname.
The test checks that the host's /etc/NetworkManager is unchanged afterwards.

Why /sys is remounted read-only in that mount namespace: without udev, NetworkManager keeps every
link unmanaged ("platform-init": it waits for udev to announce the device, which never happens
here).  NetworkManager decides whether to wait for udev by whether /sys is writable: in a
container, where /sys is read-only, it takes links as initialised at once.  A read-only /sys in
its own mount namespace gives it exactly that, and changes nothing for the rest of the machine.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmgr.errors import HostError
from kvmgr.host.bridge import create_bridge
from kvmgr.host.bridge_backends import Settle
from kvmgr.host.bridge_ip import Ip, LinkState
from kvmgr.host.bridge_plans import split_terse

pytestmark = pytest.mark.integration

SRC = Path(__file__).resolve().parents[2] / "src"
KVMGR = Path(sys.executable).with_name("kvmgr")
UPLINK = "up0"
GATEWAY = "10.233.7.1"
HOST_ADDR = "10.233.7.2/24"
NOBODY = "10.233.7.99"  # in the subnet, nothing answers it
PROFILE = "t-nm-uplink"  # the uplink's own connection, as an installer would have made it

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""

# no-auto-default: no "Wired connection 1" appears for the uplink (a host's installer made a
# profile for it, the test makes one too).  dns/rc-manager/hostname-mode: NetworkManager must not
# write /etc/resolv.conf or set the hostname of the machine it shares those with.
NM_CONFIG = """[main]
plugins=keyfile
no-auto-default=*
dns=none
rc-manager=unmanaged
hostname-mode=none
systemd-resolved=false

[logging]
level=INFO
"""

# Runs inside the namespace's own mount namespace; exec keeps NetworkManager's pid the Popen's.
NM_START = """set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/NetworkManager
mount --bind "$1/lib" /var/lib/NetworkManager
mount --bind "$1/etc" /etc/NetworkManager
mount -o remount,ro /sys
exec /usr/sbin/NetworkManager --debug
"""


@dataclass
class NmLab:
    netns: str
    gateway_ns: str
    dir: Path
    bus: str
    nm: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus, "PYTHONPATH": str(SRC)}

    @property
    def ip(self) -> Ip:
        return Ip(self.netns)

    def state(self) -> LinkState:
        return self.ip.read(UPLINK)

    def nmcli(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            ["nmcli", *args], env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        if check:
            assert done.returncode == 0, f"nmcli {' '.join(args)}: {done.stderr}"
        return done.stdout

    def profiles(self) -> dict[str, tuple[str, ...]]:
        """Every connection profile NetworkManager has, with its type, autoconnect and device."""
        rows = self.nmcli("-t", "-f", "NAME,TYPE,AUTOCONNECT,DEVICE", "connection", "show")
        return {f[0]: tuple(f[1:]) for f in map(split_terse, rows.splitlines())}

    def keyfiles(self) -> dict[str, str]:
        """The profile files themselves, name -> text (NetworkManager's persistent state).

        Without ``timestamp=``: NetworkManager's record of the profile's last activation, which
        it writes into the file whenever the profile is saved (kvmgr turns autoconnect off and
        on again); a reactivation is expected to move it, a setting is not.
        """
        folder = self.dir / "etc" / "system-connections"
        return {
            p.name: "".join(
                line for line in p.read_text().splitlines(True) if not line.startswith("timestamp=")
            )
            for p in sorted(folder.iterdir())
        }

    def device_state(self, device: str) -> tuple[str, str]:
        """NetworkManager's (state, connection) of ``device``; ("down", "") before it answers."""
        rows = self.nmcli("-t", "-f", "DEVICE,STATE,CONNECTION", "device", check=False)
        for line in rows.splitlines():
            name, state, connection = split_terse(line)
            if name == device:
                return state, connection
        return ("absent" if rows else "down"), ""

    def kvmgr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KVMGR), *args],
            env=self.env | {"KVMGR_STATE_DIR": str(self.dir / "kvmgr")},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )


def _same_keyfiles(before: dict[str, str], after: dict[str, str]) -> None:
    assert sorted(after) == sorted(before)
    for name, text in before.items():
        diff = difflib.unified_diff(text.splitlines(), after[name].splitlines(), lineterm="")
        assert after[name] == text, f"{name} changed:\n" + "\n".join(diff)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    return {str(p): _digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=15, capture_output=True)


def _until(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def nm_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NmLab]:
    for program in ("NetworkManager", "nmcli", "dbus-daemon", "unshare"):
        if shutil.which(program) is None and not Path(f"/usr/sbin/{program}").exists():
            pytest.fail(f"{program} is missing: scripts/install-test-deps.sh installs it")
    host_nm_config = _tree(Path("/etc/NetworkManager"))
    base = tmp_path_factory.mktemp("nm")
    tag = uuid.uuid4().hex[:6]
    netns, gateway_ns = f"kvmgr-t-nm-{tag}", f"kvmgr-t-nm-{tag}-gw"
    for sub in ("lib", "etc/system-connections", "etc/conf.d", "kvmgr"):
        (base / sub).mkdir(parents=True)
    (base / "etc" / "NetworkManager.conf").write_text(NM_CONFIG)
    (base / "bus.conf").write_text(BUS_CONFIG.format(socket=base / "bus"))
    started: list[subprocess.Popen[bytes]] = []
    try:
        _ip("netns", "add", netns)
        _ip("netns", "add", gateway_ns)
        _ip("-n", netns, "link", "add", UPLINK, "type", "veth", "peer", "name", "gw0")
        _ip("-n", netns, "link", "set", "gw0", "netns", gateway_ns)
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", gateway_ns, "link", "set", "gw0", "up")
        _ip("-n", gateway_ns, "address", "add", f"{GATEWAY}/24", "dev", "gw0")
        log = (base / "dbus.log").open("wb")
        started.append(
            subprocess.Popen(
                ["dbus-daemon", "--nofork", f"--config-file={base / 'bus.conf'}"],
                stdout=log,
                stderr=log,
            )
        )
        _until("the private system bus", (base / "bus").exists, 10)
        nm_log = (base / "nm.log").open("wb")
        lab = NmLab(
            netns,
            gateway_ns,
            base,
            f"unix:path={base / 'bus'}",
            subprocess.Popen(
                [
                    *("ip", "netns", "exec", netns, "unshare", "-m", "--propagation", "private"),
                    *("sh", "-c", NM_START, "nm-start", str(base)),
                ],
                env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={base / 'bus'}"},
                stdout=nm_log,
                stderr=nm_log,
            ),
        )
        started.append(lab.nm)
        _until(
            "NetworkManager to manage the uplink",
            lambda: lab.nm.poll() is None and lab.device_state(UPLINK)[0] == "disconnected",
        )
        # The uplink as an installed host has it: a static profile with the default route.
        lab.nmcli(
            *("connection", "add", "type", "ethernet", "con-name", PROFILE, "ifname", UPLINK),
            *("ipv4.method", "manual", "ipv4.addresses", HOST_ADDR, "ipv4.gateway", GATEWAY),
            *("ipv6.method", "disabled", "connection.autoconnect", "yes"),
        )
        lab.nmcli("connection", "up", PROFILE)
        yield lab
    finally:
        for process in reversed(started):
            _stop(process)
        for name in (netns, gateway_ns):
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=15)
        print((base / "nm.log").read_text(errors="replace")[-3000:])  # shown when a test fails
        assert all(p.poll() is not None for p in started), "a daemon of the test is still running"
        assert _tree(Path("/etc/NetworkManager")) == host_nm_config, "host config changed"


def _uplink_back(lab: NmLab) -> None:
    _until(
        f"{PROFILE} active on {UPLINK} again",
        lambda: (
            lab.device_state(UPLINK) == ("connected", PROFILE)
            and HOST_ADDR in {a.cidr for a in lab.state().addresses}
        ),
    )


def test_nm_manages_the_namespace_uplink(nm_lab: NmLab) -> None:
    """The premise of the other tests: NetworkManager itself configured the uplink."""
    assert nm_lab.device_state(UPLINK) == ("connected", PROFILE)
    state = nm_lab.state()
    assert HOST_ADDR in {a.cidr for a in state.addresses}
    assert state.default_route is not None
    assert (nm_lab.dir / "etc" / "system-connections" / f"{PROFILE}.nmconnection").is_file()


def test_create_through_nmcli_then_delete_restores_profiles(nm_lab: NmLab) -> None:
    before_profiles, before_files = nm_lab.profiles(), nm_lab.keyfiles()
    bridge = "t-nm-br0"
    made = nm_lab.kvmgr(
        *("host", "bridge", "create", bridge, "--uplink", UPLINK, "--netns", nm_lab.netns),
        *("--backend", "nmcli", "--yes", "--ping", GATEWAY, "--root", str(nm_lab.dir / "root")),
        *("-o", "json"),
    )
    assert made.returncode == 0, made.stderr + made.stdout
    assert json.loads(made.stdout)["backend"] == "nmcli"
    # NetworkManager, not kvmgr's own ip calls, runs the bridge: its profiles are active.
    assert nm_lab.device_state(bridge) == ("connected", bridge)
    assert nm_lab.device_state(UPLINK)[1] == f"{bridge}-port-{UPLINK}"
    moved = nm_lab.ip.read(bridge)
    assert HOST_ADDR in {a.cidr for a in moved.addresses}
    assert moved.default_route is not None
    assert nm_lab.profiles()[PROFILE][1] == "no"  # the old profile no longer autoconnects
    assert {f"{bridge}.nmconnection", f"{bridge}-port-{UPLINK}.nmconnection"} <= set(
        nm_lab.keyfiles()
    )

    gone = nm_lab.kvmgr(
        *("host", "bridge", "delete", bridge, "--netns", nm_lab.netns, "--yes"),
        *("--root", str(nm_lab.dir / "root")),
    )
    assert gone.returncode == 0, gone.stderr + gone.stdout
    _uplink_back(nm_lab)
    assert not nm_lab.ip.link_exists(bridge)
    assert nm_lab.profiles() == before_profiles
    _same_keyfiles(before_files, nm_lab.keyfiles())


def test_failed_verification_rolls_back_nm_profiles(
    nm_lab: NmLab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The bridge comes up but the ping does not answer: every profile goes back as it was."""
    before_profiles, before_files, before = nm_lab.profiles(), nm_lab.keyfiles(), nm_lab.state()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", nm_lab.bus)  # nmcli inherits kvmgr's env
    with pytest.raises(HostError) as caught:
        create_bridge(
            "t-nm-br1",
            UPLINK,
            netns=nm_lab.netns,
            yes=True,
            ping=NOBODY,
            ping_timeout=1,
            backend="nmcli",
            root=tmp_path,
            settle=Settle(timeout=10.0, interval=0.5),
        )
    assert "restored as they were" in caught.value.message, caught.value.message
    assert NOBODY in caught.value.message
    _uplink_back(nm_lab)
    assert not nm_lab.ip.link_exists("t-nm-br1")
    assert nm_lab.profiles() == before_profiles
    _same_keyfiles(before_files, nm_lab.keyfiles())
    after = nm_lab.state()
    assert {a.cidr for a in after.addresses} == {a.cidr for a in before.addresses}
    assert after.default_route == before.default_route
