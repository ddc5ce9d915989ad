"""May this principal use object X as input to action Y: the one place that decides.

Every object a request names as an *input* is authorised like the VM it acts on: disk paths,
volumes, ISOs, pools, networks, bridges, templates and snapshots.  The API's routes and the CLI
both call :class:`Authz`; services below never see who asks.  The rules (docs/SECURITY.md):

* A host path is resolved first (symlinks, ``..``), for admins too, and only the resolved path
  is checked and handed to libvirt.
* A path that is a volume of a storage pool is a volume.  Operators may use a volume they (or
  their group) own, or one no one owns and no VM they may not act on uses, in a pool they may
  use.  No one attaches a template's disk or the base of an overlay volume: writing it would
  corrupt every linked clone.
* A path outside every pool is admin-only, and never inside a system directory
  (:data:`PROTECTED_TREES`; block devices under /dev excepted, for admins).
* Operators boot ISOs of the ISO library only; admins any resolved ``.iso`` path outside the
  system directories.
* Pools and networks without a group are shared by every operator; one given a group serves only
  that group (and admins).  A host bridge that no libvirt network wraps is admin-only.
* New pools never sit in, on or above a system directory.
"""

from __future__ import annotations

import getpass
import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from kvmgr.connect import Connection
from kvmgr.connect.uri import is_local
from kvmgr.errors import Forbidden, InvalidInput, NotFound, libvirt_errors
from kvmgr.services import vms
from kvmgr.services.create import VMSpec
from kvmgr.services.isos import ISO_POOL
from kvmgr.services.storage import find_volume_by_path, volume_users
from kvmgr.store import ownership
from kvmgr.store.db import Store
from kvmgr.store.models import Role, User
from kvmgr.store.ownership import LOCAL_HOST, ObjectOwner
from kvmgr.store.users import Principal
from kvmgr.xml.domain import Domain

#: Directories no pool may sit in or above, and no host-path disk or ISO may come from.
#: /run and /dev hold sockets and devices; the rest is the operating system.  kvmgr's own state
#: directory adds its secrets (:func:`state_dirs`), not all of it: the demo ISO lives there.
#: (Home and scratch directories are in :data:`PROTECTED_EXACT`: a pool *in* them is fine, a
#: pool *on* them is not.)
PROTECTED_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/libvirt/qemu",
    "/var/lib/libvirt/dnsmasq",
    "/var/log",
    "/var/run",
    "/var/spool",
)
#: Directories a pool may not *be* (a dir pool lists every file as a volume).
PROTECTED_EXACT = ("/", "/home", "/mnt", "/media", "/opt", "/srv", "/tmp", "/var", "/var/tmp")  # noqa: S108 - names refused, never used


def cli_principal() -> Principal:
    """The CLI's caller: whoever may open the libvirt socket is an admin of it."""
    return Principal(id=0, name=f"cli:{getpass.getuser()}"[:64], role=Role.admin, group=None)


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


@dataclass
class Resolved:
    """A disk input after the check: the path to hand libvirt, and what ownership to record."""

    path: str
    volume: bool
    record: bool = False  # a free volume the caller takes: record it as theirs


@dataclass
class Authz:
    """The decisions for one principal on one host's connection.  ``store`` is read for
    ownership; without one (a CLI that opened no database) only admins get through."""

    conn: Connection
    who: Principal
    store: Store | None
    host: str = LOCAL_HOST
    state_dirs: tuple[str, ...] = ()
    #: The CLI's caller names files relative to their directory; an API client has none.
    relative_paths: bool = False
    _usage: dict[str, list[str]] | None = field(default=None, repr=False)
    _templates: dict[str, str] | None = field(default=None, repr=False)

    @property
    def admin(self) -> bool:
        return self.who.at_least(Role.admin)

    def _refuse(self, message: str, hint: str) -> Forbidden:
        return Forbidden(f"user {self.who.name!r} ({self.who.role.value}) {message}", hint=hint)

    def _row(self, kind: str, key: str) -> ObjectOwner | None:
        if self.store is None:
            return None
        with self.store.session() as session:
            return ownership.get(session, kind, key, self.host)

    # ------------------------------------------------------------------ VMs
    def may_act_on_uuid(self, uuid: str) -> bool:
        if self.admin:
            return True
        return ownership.may_act(self.who, self._row("vm", uuid))

    def vm(self, name: str) -> str:
        """Refuse unless the caller may act on VM ``name``; its UUID."""
        uuid = str(vms.lookup(self.conn, name).UUIDString())
        if not self.may_act_on_uuid(uuid):
            raise self._refuse(
                f"may not act on VM {name!r}",
                "operators act on the VMs they or their group own; ask an admin",
            )
        return uuid

    def clone_source(self, name: str) -> str:
        """A clone reads its source: the caller's own VM, or a template of theirs or an admin's."""
        dom = vms.lookup(self.conn, name)
        uuid = str(dom.UUIDString())
        if self.may_act_on_uuid(uuid):
            return uuid
        meta = vms.definition(dom, inactive=True).kvmgr_metadata()
        template = meta is not None and meta.template
        if template and self.who.at_least(Role.operator) and self._admins_template(uuid):
            return uuid
        raise self._refuse(
            f"may not clone VM {name!r}",
            "clone your own VMs, or templates an admin made; ask an admin",
        )

    def _admins_template(self, uuid: str) -> bool:
        """An admin's template (no owner, or an admin owner, and no group) is for every operator
        to clone; an operator's stays their own and their group's."""
        if self.store is None:
            return False
        with self.store.session() as session:
            row = ownership.get(session, "vm", uuid, self.host)
            if row is None or row.owner_id is None:
                return row is None or row.group is None
            owner = session.get(User, row.owner_id)
            return row.group is None and owner is not None and owner.role == Role.admin.value

    # ------------------------------------------------------------------ paths
    def resolve(self, path: str, *, what: str) -> str:
        """The path with symlinks and ``..`` resolved, as the host will open it.

        On a local daemon this is the real path (a relative one from the CLI's directory).  A
        remote host's symlinks cannot be read from here, so there only the lexical form of an
        absolute path counts and host paths stay volumes-only.
        """
        if "\x00" in path:
            raise InvalidInput(f"{what} {path!r} contains a NUL byte")
        if not path.startswith("/") and not self.relative_paths:
            raise InvalidInput(f"{what} {path!r} must be an absolute path")
        if is_local(self.conn.uri):  # the test driver too: its files are (fake) local paths
            return os.path.realpath(path)
        if not path.startswith("/"):
            raise InvalidInput(f"{what} {path!r} must be an absolute path on a remote host")
        return posixpath.normpath(path)

    def protected(self, path: str) -> str | None:
        """The system directory ``path`` (resolved) lies in, if any."""
        for tree in (*PROTECTED_TREES, *self.state_dirs):
            if _under(path, tree):
                return tree
        return None

    def pool_path(self, path: str) -> str:
        """Refuse a pool in, on or above a system directory; the resolved path to use."""
        resolved = self.resolve(path, what="pool path")
        trees = (*PROTECTED_TREES, *self.state_dirs)
        blocked = next((tree for tree in trees if _under(resolved, tree)), None)
        blocked = blocked or next((tree for tree in trees if _under(tree, resolved)), None)
        if blocked is None and resolved in PROTECTED_EXACT:
            blocked = resolved
        if blocked is not None:
            shown = path if path == resolved else f"{path} (resolves to {resolved})"
            raise InvalidInput(
                f"a pool cannot be created at {shown}: it is or holds the system directory "
                f"{blocked}, and a directory pool offers every file in it as a volume",
                hint="use a directory of its own, e.g. /var/lib/libvirt/images/NAME or /srv/NAME",
            )
        return resolved

    # ------------------------------------------------------------------ disks
    def _usage_map(self) -> dict[str, list[str]]:
        if self._usage is None:
            self._usage = volume_users(self.conn)
        return self._usage

    def _template_disks(self) -> dict[str, str]:
        """Path -> template VM name for every disk of a template."""
        if self._templates is None:
            found: dict[str, str] = {}
            for dom, spec in vms.all_definitions(self.conn):
                meta = spec.kvmgr_metadata()
                if meta is not None and meta.template:
                    for disk in spec.devices.disks:
                        for path in (disk.source_file, disk.source_dev):
                            if path:
                                found[path] = dom.name()
            self._templates = found
        return self._templates

    def disk(self, path: str) -> Resolved:
        """An existing disk named by path: checked, resolved."""
        resolved = self.resolve(path, what="disk path")
        self._writable_volume(resolved)
        vol = find_volume_by_path(self.conn, resolved)
        if vol is None:
            return Resolved(self._host_path(path, resolved, what="disk"), volume=False)
        if self.admin:
            return Resolved(resolved, volume=True)
        with libvirt_errors(f"reading volume {resolved}"):
            pool = vol.storagePoolLookupByVolume().name()
        if pool == ISO_POOL:
            raise self._refuse(
                f"may not attach ISO library file {resolved} as a disk",
                "boot it as the VM's CD-ROM (iso) instead",
            )
        self.pool(pool)
        row = self._row("volume", resolved)
        if row is not None and not ownership.may_act(self.who, row):
            raise self._refuse(
                f"may not use volume {resolved}: another user or group owns it",
                "use a volume of your own, or a new one (size=...)",
            )
        # Whatever the record says (it may outlive a VM deleted outside the API), a volume a VM
        # the caller may not act on uses is not theirs to attach.
        users = [user for user in self._usage_map().get(resolved, []) if user.startswith("VM ")]
        foreign = [user for user in users if not self._may_act_on_vm_name(user[3:])]
        if foreign:
            raise self._refuse(
                f"may not use volume {resolved}: {', '.join(foreign)} uses it",
                "use a volume of your own, or a new one (size=...)",
            )
        return Resolved(resolved, volume=True, record=row is None)

    def _may_act_on_vm_name(self, name: str) -> bool:
        try:
            uuid = str(vms.lookup(self.conn, name).UUIDString())
        except NotFound:
            return False
        return self.may_act_on_uuid(uuid)

    def _writable_volume(self, path: str) -> None:
        """No one writes a template's disk or an overlay's base (every clone would break)."""
        template = self._template_disks().get(path)
        if template is not None:
            raise Forbidden(
                f"{path} is a disk of template {template!r}; writing it corrupts its linked clones",
                hint=f"clone the template ('kvmgr vm clone {template} NAME --linked') instead",
            )
        bases = [user for user in self._usage_map().get(path, []) if user.startswith("volume ")]
        if bases:
            raise Forbidden(
                f"{path} is the base image of {', '.join(bases)}; writing it corrupts them",
                hint="attach an overlay of it, or a copy",
            )

    def _host_path(self, given: str, resolved: str, *, what: str) -> str:
        if not self.admin:
            raise self._refuse(
                f"may not use host path {given} as a {what}: only volumes of storage pools",
                "use a volume of a pool, a new disk (size=...), or an ISO of the library",
            )
        if not (is_local(self.conn.uri) or self.conn.is_test_driver):
            raise InvalidInput(
                f"{given} is not a volume of any storage pool on this remote host",
                hint="put it in a pool there ('kvmgr pool create'), then use its volume path",
            )
        tree = self.protected(resolved)
        if tree is not None and not (tree == "/dev" and _is_block_device(resolved)):
            shown = given if given == resolved else f"{given} (resolves to {resolved})"
            raise Forbidden(
                f"{what} {shown} lies in the system directory {tree}",
                hint="copy the image into a storage pool and use that volume",
            )
        if not self.conn.is_test_driver and not os.path.exists(resolved):
            raise NotFound(f"{what} {given!r} does not exist", hint="give an existing file")
        return resolved

    def import_source(self, path: str, *, what: str = "ISO") -> str:
        """A file kvmgr itself reads to upload into a library (``iso import``, ``image import``):
        resolved here, where kvmgr runs, and never a system file (every operator may boot it)."""
        if not self.admin:
            raise self._refuse(f"may not import files into the {what} library", "ask an admin")
        if not path.startswith("/") or "\x00" in path:
            raise InvalidInput(f"{what} path {path!r} must be an absolute path")
        resolved = os.path.realpath(path)
        tree = self.protected(resolved)
        if tree is not None and not (tree == "/dev" and _is_block_device(resolved)):
            shown = path if path == resolved else f"{path} (resolves to {resolved})"
            raise Forbidden(
                f"{what} {shown} lies in the system directory {tree}",
                hint="import images from a directory of their own",
            )
        return resolved

    # ------------------------------------------------------------------ pools, ISOs, networks
    def pool(self, name: str) -> None:
        """Refuse a pool the caller may not allocate or take volumes in."""
        if self.admin:
            return
        if name == ISO_POOL:
            raise self._refuse(
                f"may not put disks in the ISO library pool {name!r}", "use another pool"
            )
        row = self._row("pool", name)
        if row is not None and row.group is not None and row.group != self.who.group:
            raise self._refuse(
                f"may not use pool {name!r}: it serves group {row.group!r}",
                "use a pool of your group or a shared one",
            )

    def iso(self, ref: str) -> str:
        """The path of the ISO to boot: the library's for operators."""
        # An existing file by a bare name (in the CLI's directory) is a path too, and checked so.
        bare_file = self.relative_paths and os.path.isfile(ref)
        if self.admin and (os.sep in ref or bare_file):
            resolved = self.resolve(ref, what="ISO path")
            if find_volume_by_path(self.conn, resolved) is not None:
                return resolved
            return self._host_path(ref, resolved, what="ISO")
        if os.sep in ref:
            resolved = self.resolve(ref, what="ISO path")
            vol = find_volume_by_path(self.conn, resolved)
            if vol is not None:
                with libvirt_errors(f"reading volume {resolved}"):
                    pool = vol.storagePoolLookupByVolume().name()
                if pool == ISO_POOL:
                    return resolved
            raise self._refuse(
                f"may not boot {ref}: only ISOs of the ISO library",
                "see 'GET /api/v1/isos' (or 'kvmgr iso list') and give an ISO's name",
            )
        try:
            library = self.conn.virconn.storagePoolLookupByName(ISO_POOL)
            return str(library.storageVolLookupByName(ref).path())
        except libvirt.libvirtError:
            if self.admin:
                from kvmgr.services.isos import resolve_iso

                return resolve_iso(self.conn, ref)
            raise NotFound(
                f"ISO {ref!r} is not in the ISO library",
                hint="see 'GET /api/v1/isos'; an admin imports ISOs",
            ) from None

    def network(self, name: str) -> None:
        if self.admin:
            return
        row = self._row("network", name)
        if row is not None and row.group is not None and row.group != self.who.group:
            raise self._refuse(
                f"may not use network {name!r}: it serves group {row.group!r}",
                "use a network of your group or a shared one",
            )

    def bridge(self, name: str) -> None:
        if not self.admin:
            raise self._refuse(
                f"may not plug a NIC straight into host bridge {name!r}",
                "use a libvirt network (an admin can make one on that bridge: mode=bridge)",
            )

    def nics(self, nics: Iterable[tuple[str, str]]) -> None:
        """(kind, source) pairs: kind is ``network`` or ``bridge``."""
        for kind, source in nics:
            if kind == "bridge":
                self.bridge(source)
            else:
                self.network(source)


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def state_dirs(*dirs: Path | str | None) -> tuple[str, ...]:
    """What of kvmgr's state directories (the default /var/lib/kvmgr and ``dirs``) no pool, disk
    or ISO may touch: the database, the secret key, the bridge backups."""
    found: list[str] = []
    for base in ("/var/lib/kvmgr", *dirs):
        if base:
            root = os.path.realpath(str(base))
            found += [f"{root}/db", f"{root}/secret_key", f"{root}/bridges"]
    return tuple(dict.fromkeys(found))


def check_definition(authz: Authz, domain: Domain, *, keep: Iterable[str] = ()) -> None:
    """Authorise the disk and CD-ROM files a whole domain definition names (``vm define``,
    ``vm edit``), except ``keep``: the paths the VM's current definition already has (a
    template's own disks stay editable in it)."""
    kept = set(keep)
    for disk in domain.devices.disks:
        for path in (disk.source_file, disk.source_dev):
            if not path or path in kept:
                continue
            if disk.device == "cdrom":
                authz.iso(path)
            else:
                authz.disk(path)


def disk_paths(domain: Domain) -> list[str]:
    return [p for disk in domain.devices.disks for p in (disk.source_file, disk.source_dev) if p]


def check_vm_spec(authz: Authz, spec: VMSpec) -> list[str]:
    """Authorise every input of a new VM and put the resolved paths into ``spec``.

    Returns the existing volumes the caller takes (free ones): record them as theirs once the VM
    exists.
    """
    taken: list[str] = []
    if spec.iso:
        spec.iso = authz.iso(spec.iso)
    for disk in spec.disks:
        if disk.path:
            resolved = authz.disk(disk.path)
            disk.path = resolved.path
            if resolved.record:
                taken.append(resolved.path)
        else:
            authz.pool(disk.pool)
    authz.nics((nic.kind, nic.source) for nic in spec.nics)
    return taken
