"""A lab of libvirt hosts on one machine: each its own libvirtd in its own namespaces.

What multi-host features (fleet listing, migration, evacuation, backups to another host) are
tested on.  Each lab host has

* a network namespace ``<lab>-h<i>`` joined by a veth pair to a bridge in the lab's namespace
  ``<lab>``, with the address ``10.250.<slot>.1<i>``; the machine itself reaches the bridge
  through one more veth pair (``<lab>-root``, address ``10.250.<slot>.1``), so kvmgr connects to
  the hosts from the root namespace as it would to remote machines;
* a mount namespace in which its own /run/libvirt, /var/lib/libvirt, /etc/libvirt,
  /var/log/libvirt, /var/cache/libvirt and /etc/hosts are bound over the machine's from a
  per-host directory, and a UTS namespace with its own host name;
* its own ``virtlogd -d``, ``libvirtd -d --listen`` (its own ``host_uuid``, TLS on its address)
  and ``sshd`` (root login by the lab's key only, on its address).

So ``qemu+ssh://root@ADDR/system`` (``?keyfile=...&command=...``: the lab's key and an ssh wrapper
that verifies host keys against the lab's own known_hosts) and ``qemu+tls://ADDR/system``
(``?pkipath=...``: the lab's client certificate) reach three distinct daemons, and the machine's own
/etc/libvirt, /var/lib/libvirt, /etc/pki, ~/.ssh and system libvirtd are never touched.

A lab is found by its name alone (namespaces ``<lab>*``, files under :data:`LAB_RUN` and
:data:`LAB_DATA`), so :func:`down` cleans up after a killed run: it kills every process in the
lab's namespaces (daemons, guests, ssh sessions), then removes mounts, namespaces and files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from kvmgr.errors import HostError, InvalidInput
from kvmgr.host import daemons, lab_pki

LAB_RUN = Path("/run/kvmgr-lab")  # namespace files, keys, certificates, lab.json
LAB_DATA = Path("/var/lib/kvmgr-lab")  # each host's libvirt directories (guest disks live here)
NETNS_DIR = Path("/run/netns")
MAX_SLOTS = 10
MAX_HOSTS = 9
_NAME = re.compile(r"^kvl[0-9]$")
#: The machine's paths each host gets its own copy of, and the per-host directory bound there.
BINDS = (
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("etc", "/etc/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
)
_LIB_DIRS = {  # /var/lib/libvirt of a fresh host, as the Debian package lays it out
    "dnsmasq": (0o755, "root"),
    "images": (0o711, "root"),
    "boot": (0o711, "root"),
    "qemu": (0o750, "libvirt-qemu"),
    "qemu/channel": (0o750, "libvirt-qemu"),
    "qemu/snapshot": (0o755, "libvirt-qemu"),
    "qemu/dump": (0o755, "libvirt-qemu"),
    "qemu/checkpoint": (0o755, "libvirt-qemu"),
    "qemu/nvram": (0o755, "libvirt-qemu"),
    "qemu/save": (0o755, "libvirt-qemu"),
    "qemu/ram": (0o755, "libvirt-qemu"),
}
# cgroups off: two daemons on one machine would both name a guest's cgroup qemu-<id>-<name>, and
# a migration between lab hosts has the same name on both sides.
_QEMU_CONF = "cgroup_controllers = [ ]\nlog_timestamp = 1\n"


@dataclass(frozen=True)
class LabHost:
    lab: str
    index: int
    address: str
    host_uuid: str

    @property
    def name(self) -> str:
        """Host name, network namespace name and certificate name at once: ``kvl1-h2``."""
        return f"{self.lab}-h{self.index}"

    @property
    def data(self) -> Path:
        return LAB_DATA / self.lab / f"h{self.index}"

    @property
    def socket(self) -> Path:
        return self.data / "run" / "libvirt-sock"

    @property
    def local_uri(self) -> str:
        """The host's daemon through its unix socket, from the machine's own namespaces."""
        return f"qemu:///system?socket={self.socket}"

    @property
    def pidfiles(self) -> dict[str, Path]:
        run = self.data / "run"
        return {
            "virtlogd": run / "virtlogd.pid",
            "libvirtd": run / "libvirtd.pid",
            "sshd": self.data / "ssh" / "sshd.pid",
        }


@dataclass(frozen=True)
class Lab:
    name: str
    slot: int
    owner_pid: int  # 0: started by hand (scripts/lab up), never reclaimed by a test run
    hosts: tuple[LabHost, ...]

    @property
    def root(self) -> Path:
        return LAB_RUN / self.name

    @property
    def ssh_key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def ssh_command(self) -> Path:
        return self.root / "ssh" / "ssh"

    @property
    def client_pki(self) -> Path:
        return self.root / "pki" / "client"

    @property
    def gateway(self) -> str:
        return f"10.250.{self.slot}.1"

    def host(self, which: int | str) -> LabHost:
        for host in self.hosts:
            if which in (host.index, host.name, f"h{host.index}", host.address):
                return host
        raise InvalidInput(f"lab {self.name} has no host {which!r}")

    def ssh_uri(self, host: LabHost) -> str:
        return (
            f"qemu+ssh://root@{host.address}/system"
            f"?keyfile={self.ssh_key}&command={self.ssh_command}"
        )

    def tls_uri(self, host: LabHost) -> str:
        return f"qemu+tls://{host.address}/system?pkipath={self.client_pki}"

    def save(self) -> None:
        data = {"name": self.name, "slot": self.slot, "owner_pid": self.owner_pid,
                "hosts": [asdict(host) for host in self.hosts]}  # fmt: skip
        (self.root / "lab.json").write_text(json.dumps(data, indent=2))


def lab_name(slot: int) -> str:
    if not 0 <= slot < MAX_SLOTS:
        raise InvalidInput(f"lab slot {slot} is out of range", hint=f"use 0..{MAX_SLOTS - 1}")
    return f"kvl{slot}"


def _check_name(name: str) -> str:
    # The name becomes namespace names and paths that down() removes: accept only our own.
    if not _NAME.match(name):
        raise InvalidInput(f"{name!r} is not a lab name", hint="lab names are kvl0 .. kvl9")
    return name


def load(name: str) -> Lab:
    """The lab ``name`` as recorded by :func:`up`."""
    path = LAB_RUN / _check_name(name) / "lab.json"
    try:
        data = json.loads(path.read_text())
        hosts = tuple(LabHost(**host) for host in data["hosts"])
        return Lab(data["name"], int(data["slot"]), int(data["owner_pid"]), hosts)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise HostError(f"lab {name} is not up ({path} unreadable: {err})") from err


def existing() -> list[str]:
    """Names of labs that left anything behind: a directory or a network namespace."""
    names = set()
    for parent in (LAB_RUN, LAB_DATA, NETNS_DIR):
        with contextlib.suppress(OSError):
            for entry in parent.iterdir():
                candidate = entry.name.split("-", 1)[0]
                if _NAME.match(candidate):
                    names.add(candidate)
    return sorted(names)


# ------------------------------------------------------------------------------ building
def _run(argv: list[str], doing: str) -> None:
    daemons.run_command(argv, doing)


def up(hosts: int = 3, *, slot: int | None = None, owner_pid: int = 0) -> Lab:
    """Build a lab of ``hosts`` hosts in ``slot`` (or the first free slot from 1) and start it.

    On any failure what was built is torn down again.
    """
    if os.geteuid() != 0:
        raise HostError("a lab needs root (namespaces, mounts, daemons)", hint="run as root")
    if not 1 <= hosts <= MAX_HOSTS:
        raise InvalidInput(f"a lab has 1..{MAX_HOSTS} hosts, not {hosts}")
    name, slot = _claim(slot)
    lab = Lab(
        name,
        slot,
        owner_pid,
        tuple(
            LabHost(name, i, f"10.250.{slot}.{10 + i}", str(uuid.uuid4()))
            for i in range(1, hosts + 1)
        ),
    )
    try:
        lab.save()
        _build(lab)
        _wait_ready(lab)
    except BaseException:
        down(name)
        raise
    return lab


def _claim(slot: int | None) -> tuple[str, int]:
    """Reserve a slot by creating its directory (atomic); stale test labs are reclaimed."""
    LAB_RUN.mkdir(parents=True, exist_ok=True)
    for candidate in [slot] if slot is not None else range(1, MAX_SLOTS):
        name = lab_name(candidate)
        try:
            (LAB_RUN / name).mkdir()
        except FileExistsError:
            if slot is not None:
                raise HostError(
                    f"lab {name} exists", hint=f"scripts/lab down --slot {candidate} removes it"
                ) from None
            if not _stale(name):
                continue
            down(name)
            try:
                (LAB_RUN / name).mkdir()
            except FileExistsError:
                continue  # another run reclaimed it first
        if name in existing() and any(NETNS_DIR.glob(f"{name}*")):
            down(name, keep_claim=True)  # namespaces left by a run that lost its directory
        return name, candidate
    raise HostError("every lab slot is taken", hint="scripts/lab status; scripts/lab down --all")


def _stale(name: str) -> bool:
    try:
        lab = load(name)
    except HostError:
        # Being built right now (lab.json not yet written) or left half-built: only old is stale.
        with contextlib.suppress(OSError):
            return time.time() - (LAB_RUN / name).stat().st_mtime > 300
        return False
    return lab.owner_pid != 0 and not Path(f"/proc/{lab.owner_pid}").exists()


def _build(lab: Lab) -> None:
    ns_dir = lab.root / "ns"
    ns_dir.mkdir(parents=True, exist_ok=True)
    # unshare can only keep a mount namespace alive by a bind mount on a private mount.
    _run(["mount", "--bind", str(ns_dir), str(ns_dir)], "binding the lab's namespace directory")
    _run(["mount", "--make-private", str(ns_dir)], "making it private")
    _make_network(lab)
    lab_pki.make_lab_credentials(lab)
    hosts_file = lab.root / "hosts"
    hosts_file.write_text(
        "127.0.0.1\tlocalhost\n" + "".join(f"{host.address}\t{host.name}\n" for host in lab.hosts)
    )
    for host in lab.hosts:
        _make_host_files(lab, host)
        _make_mount_namespace(lab, host, hosts_file)
    for host in lab.hosts:
        _start_daemons(lab, host)


def _make_network(lab: Lab) -> None:
    bridge_ns = lab.name
    _run(["ip", "netns", "add", bridge_ns], f"creating namespace {bridge_ns}")
    _ip(bridge_ns, "link", "set", "lo", "up")
    _ip(bridge_ns, "link", "add", "br0", "type", "bridge")
    _ip(bridge_ns, "link", "set", "br0", "up")
    root_side = f"{lab.name}-root"
    _run(["ip", "link", "add", root_side, "type", "veth", "peer", "name", "root", "netns",
          bridge_ns], "creating the machine's veth into the lab")  # fmt: skip
    _ip(bridge_ns, "link", "set", "root", "master", "br0", "up")
    _run(["ip", "addr", "add", f"{lab.gateway}/24", "dev", root_side], "addressing it")
    _run(["ip", "link", "set", root_side, "up"], "bringing it up")
    for host in lab.hosts:
        _run(["ip", "netns", "add", host.name], f"creating namespace {host.name}")
        port = f"h{host.index}"
        _ip(bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
            host.name)  # fmt: skip
        _ip(bridge_ns, "link", "set", port, "master", "br0", "up")
        _ip(host.name, "link", "set", "lo", "up")
        _ip(host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip(host.name, "link", "set", "eth0", "up")


def _ip(netns: str, *args: str) -> None:
    _run(["ip", "-n", netns, *args], f"ip {' '.join(args)} in {netns}")


def _make_host_files(lab: Lab, host: LabHost) -> None:
    for sub, _target in BINDS:
        (host.data / sub).mkdir(parents=True, exist_ok=True, mode=0o755)
    for sub, (mode, owner) in _LIB_DIRS.items():
        path = host.data / "lib" / sub
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        shutil.chown(path, owner, owner)
    (host.data / "log" / "qemu").mkdir(exist_ok=True)
    (host.data / "cache").chmod(0o711)
    # QEMU's capabilities cache is valid for the same binaries: copying the machine's spares each
    # daemon a probe of every QEMU binary at start-up.
    caps = Path("/var/cache/libvirt/qemu/capabilities")
    if caps.is_dir():
        shutil.copytree(caps, host.data / "cache" / "qemu" / "capabilities", dirs_exist_ok=True)
    etc = host.data / "etc"
    for conf in ("libvirt.conf", "virtlogd.conf", "virtlockd.conf"):
        if Path("/etc/libvirt", conf).exists():
            shutil.copy(Path("/etc/libvirt", conf), etc / conf)
    if Path("/etc/libvirt/nwfilter").is_dir():
        shutil.copytree("/etc/libvirt/nwfilter", etc / "nwfilter", dirs_exist_ok=True)
    for sub in ("qemu/networks/autostart", "qemu/autostart", "storage/autostart", "secrets",
                "hooks"):  # fmt: skip
        (etc / sub).mkdir(parents=True, exist_ok=True)
    default_net = Path("/etc/libvirt/qemu/networks/default.xml")
    if default_net.exists():
        shutil.copy(default_net, etc / "qemu/networks/default.xml")
        with contextlib.suppress(FileExistsError):
            (etc / "qemu/networks/autostart/default.xml").symlink_to("../default.xml")
    pki = host.data / "pki"
    # Pull-mode backups of this host's VMs export their disks over TCP with this certificate.
    (etc / "qemu.conf").write_text(
        _QEMU_CONF + f'backup_tls_x509_cert_dir = "{pki / lab_pki.QEMU_DIR}"\n'
    )
    (etc / "libvirtd.conf").write_text(
        f'host_uuid = "{host.host_uuid}"\n'
        "listen_tls = 1\nlisten_tcp = 0\n"
        f'listen_addr = "{host.address}"\n'
        f'ca_file = "{pki / lab_pki.CA_CERT}"\n'
        f'cert_file = "{pki / lab_pki.SERVER_CERT}"\n'
        f'key_file = "{pki / lab_pki.SERVER_KEY}"\n'
        'auth_unix_rw = "none"\nauth_tls = "none"\n'
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
    )
    ssh = host.data / "ssh"
    (ssh / "sshd_config").write_text(
        f"ListenAddress {host.address}\n"
        f"HostKey {ssh / 'host_ed25519'}\n"
        f"PidFile {host.pidfiles['sshd']}\n"
        f"AuthorizedKeysFile {lab.root / 'ssh' / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nX11Forwarding no\n"
        "AllowTcpForwarding no\nPermitTunnel no\nMaxStartups 50\n"
    )


def _ns_files(lab: Lab, host: LabHost) -> tuple[Path, Path]:
    ns = lab.root / "ns"
    return ns / f"h{host.index}.mnt", ns / f"h{host.index}.uts"


def _make_mount_namespace(lab: Lab, host: LabHost, hosts_file: Path) -> None:
    mnt, uts = _ns_files(lab, host)
    mnt.touch()
    uts.touch()
    commands = [f"mkdir -p {shlex.quote(target)}" for _sub, target in BINDS]
    commands += [
        f"mount --bind {shlex.quote(str(host.data / sub))} {shlex.quote(target)}"
        for sub, target in BINDS
    ]
    commands.append(f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts")
    commands.append(f"hostname {shlex.quote(host.name)}")
    # slave: the machine's later mounts still appear inside, the host's binds never leak out.
    _run(
        ["unshare", f"--mount={mnt}", f"--uts={uts}", "--propagation", "slave", "--",
         "sh", "-ec", " && ".join(commands)],
        f"making the mount namespace of {host.name}",
    )  # fmt: skip


def enter(lab: Lab, host: LabHost) -> list[str]:
    """The argv prefix that runs a command inside ``host``'s namespaces."""
    mnt, uts = _ns_files(lab, host)
    return ["nsenter", f"--net={NETNS_DIR / host.name}", f"--mount={mnt}", f"--uts={uts}", "--"]


def _start_daemons(lab: Lab, host: LabHost) -> None:
    inside = enter(lab, host)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    _run([*inside, "virtlogd", "-d", "-p", "/run/libvirt/virtlogd.pid"],
         f"starting virtlogd on {host.name}")  # fmt: skip
    _run([*inside, "libvirtd", "-d", "--listen", "-p", "/run/libvirt/libvirtd.pid"],
         f"starting libvirtd on {host.name}")  # fmt: skip
    _run([*inside, "/usr/sbin/sshd", "-f", str(host.data / "ssh" / "sshd_config"),
          "-E", str(host.data / "log" / "sshd.log")], f"starting sshd on {host.name}")  # fmt: skip


def _wait_ready(lab: Lab, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(lab.hosts)
    while waiting:
        waiting = [host for host in waiting if not daemons.daemon_answers(host.local_uri)]
        if waiting and time.monotonic() > deadline:
            names = ", ".join(host.name for host in waiting)
            raise HostError(f"libvirtd of {names} did not answer within {timeout:.0f} s",
                            hint=f"read {waiting[0].data / 'log' / 'libvirtd.log'}")  # fmt: skip
        if waiting:
            time.sleep(0.1)
    for host in lab.hosts:
        _ensure_default_pool(host)


def _ensure_default_pool(host: LabHost) -> None:
    import libvirt

    from kvmgr.connect import open_connection

    with open_connection(host.local_uri) as conn:
        virconn = conn.virconn
        try:
            pool = virconn.storagePoolLookupByName("default")
        except libvirt.libvirtError:
            pool = virconn.storagePoolDefineXML(
                "<pool type='dir'><name>default</name>"
                "<target><path>/var/lib/libvirt/images</path></target></pool>",
                0,
            )
            pool.setAutostart(1)
        if not pool.isActive():
            pool.create(0)


# ------------------------------------------------------------------------------ tearing down
def _ns_inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _lab_processes(namespaces: set[int]) -> list[int]:
    """Every process whose network or mount namespace is one of ``namespaces``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for kind in ("net", "mnt"):
            with contextlib.suppress(OSError):
                if (entry / "ns" / kind).stat().st_ino in namespaces:
                    found.append(int(entry.name))
                    break
    return found


def _kill_all(namespaces: set[int], timeout: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _lab_processes(namespaces)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = [pid for pid in pids if process_alive(pid)]
        if not pids:
            return
    raise HostError(f"processes {pids} of the lab did not die")


def process_alive(pid: int) -> bool:
    """The process runs (a zombie does not: it waits to be reaped by an init that may be slow)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has released its namespaces' resources already


def down(name: str, *, keep_claim: bool = False) -> list[str]:
    """Kill everything the lab ``name`` runs and remove its namespaces, mounts and files."""
    _check_name(name)
    done = []
    root, data = LAB_RUN / name, LAB_DATA / name
    netns = sorted(p for p in NETNS_DIR.glob(f"{name}*") if p.name == name or
                   p.name.startswith(f"{name}-"))  # fmt: skip
    ns_files = sorted((root / "ns").glob("h*.*")) if (root / "ns").is_dir() else []
    inodes = {ino for ino in map(_ns_inode, [*netns, *ns_files]) if ino is not None}
    # A namespace file that is not mounted any more is a plain empty file of the root fs: its inode
    # is no namespace, but it cannot match one either (different device), so keeping it is harmless.
    if inodes:
        _kill_all(inodes)
        done.append(f"killed the processes in {len(netns)} network namespaces")
    for path in ns_files:
        _umount(path)
    if (root / "ns").is_dir():
        _umount(root / "ns")
    for path in netns:
        with contextlib.suppress(HostError):
            _run(["ip", "netns", "delete", path.name], f"deleting namespace {path.name}")
            done.append(f"deleted namespace {path.name}")
    if Path(f"/sys/class/net/{name}-root").exists():
        with contextlib.suppress(HostError):
            _run(["ip", "link", "delete", f"{name}-root"], "deleting the machine's veth")
    for path in (data, root):
        if path.exists() and not (keep_claim and path == root):
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path}")
    if keep_claim:
        root.mkdir(exist_ok=True)
    return done


def _umount(path: Path) -> None:
    for _attempt in range(2):
        if not os.path.ismount(path) and not _is_nsfs(path):
            return
        with contextlib.suppress(HostError):
            _run(["umount", str(path)], f"unmounting {path}")
            continue
        _run(["umount", "-l", str(path)], f"unmounting {path} lazily")


def _is_nsfs(path: Path) -> bool:
    # A bound namespace file is not a mount point to os.path.ismount (same parent device is not
    # checked for files), so look for it in the mount table.
    with contextlib.suppress(OSError):
        return any(line.split()[4] == str(path)
                   for line in Path("/proc/self/mountinfo").read_text().splitlines())  # fmt: skip
    return False


# ------------------------------------------------------------------------------ status
@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    host_uuid: str
    daemons: dict[str, int | None]  # name -> pid when it runs
    answers: bool


def status(name: str) -> list[HostStatus]:
    lab = load(name)
    found = []
    for host in lab.hosts:
        running: dict[str, int | None] = {}
        for daemon, pidfile in host.pidfiles.items():
            pid = None
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
            running[daemon] = pid if pid is not None and process_alive(pid) else None
        answers = daemons.daemon_answers(host.local_uri)
        found.append(HostStatus(host.name, host.address, host.host_uuid, running, answers))
    return found
