"""The host registry: which libvirt daemons kvmgr manages, by name, and their connections.

A host is a row of ``hosts`` (:mod:`kvmgr.control.host_models`): a name, a libvirt URI, labels,
a maintenance flag, the machine's identity as libvirt reports it (``host_uuid``), when it was
added and last answered.  Everything else about a host (versions, CPUs, memory, VMs) is asked of
libvirt when wanted, never copied into the database.

Rules decided here:

* The local daemon is a host too.  With no host registered, the first command that needs a
  host's name (``host list``, a lease, ownership) registers ``local`` with ``$KVMGR_URI`` or
  ``qemu:///system``; reading needs no registration (kvmgr.control.host_lookup).
* Without ``--host``, a command acts on the default host (``kvmgr host set NAME --default``),
  else the only host, else ``local`` (the local daemon stays what plain ``kvmgr vm list`` shows
  after remote hosts are added); with several, no default and no ``local`` it asks for
  ``--host``.
* ``-c URI`` names a daemon directly and opens it without the registry (as before).  When kvmgr
  needs its host *name* (leases, journal), a registered host with that URI is that host; an
  unregistered URI is registered on first use under a name derived from it (``local`` for the
  local daemon when no ``local`` exists, else the URI's host name, ``test-<file>`` for a test
  driver file), so every row that names a host names a registered one.
* One machine is registered once: ``host add`` refuses a URI whose daemon reports the
  ``host_uuid`` of a registered host.
* Connections are opened within a time bound, with libvirt keepalive, and kept for the
  process (:func:`connect_uri`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import libvirt
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kvmgr.connect import Connection, default_uri, is_local, validate_uri
from kvmgr.connect.bounded import (
    Outcome,
    close_connections,
    connect_uri,
    fan_out,
    forget_connection,
    host_timeout,
)
from kvmgr.control.fleet import list_fleet, reason
from kvmgr.control.host_lookup import LOCAL, choose_default
from kvmgr.control.host_models import Host
from kvmgr.errors import AlreadyExists, InvalidInput, InvalidState, NotFound, libvirt_errors
from kvmgr.host.memory import node_memory
from kvmgr.names import AUTO_HOST, validate_name
from kvmgr.store.db import Store
from kvmgr.store.models import aware, utcnow
from kvmgr.store.ownership import ObjectOwner

# connect_uri and close_connections live with the bounded open (kvmgr.connect.bounded) and are
# re-exported here, where callers of the registry look for them.
__all__ = [
    "LOCAL",
    "HostRecord",
    "HostRegistry",
    "check_host_uri",
    "close_connections",
    "connect_uri",
    "derived_name",
    "host_facts",
    "host_identity",
    "kvmgr_vms",
    "parse_labels",
    "status_row",
]
_SECURE_TRANSPORTS = {"", "unix", "ssh", "libssh", "libssh2", "tls"}
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.\-/:@]{0,63}")


# ------------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class HostRecord:
    """A registered host, detached from the database session."""

    name: str
    uri: str
    labels: dict[str, str] = field(default_factory=dict)
    maintenance: bool = False
    is_default: bool = False
    host_uuid: str | None = None
    added: datetime | None = None
    last_seen: datetime | None = None

    @classmethod
    def of(cls, row: Host) -> HostRecord:
        return cls(
            name=row.name,
            uri=row.uri,
            labels=dict(row.labels or {}),
            maintenance=row.maintenance,
            is_default=row.is_default,
            host_uuid=row.host_uuid,
            added=aware(row.added) if row.added else None,
            last_seen=aware(row.last_seen) if row.last_seen else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uri": self.uri,
            "labels": dict(self.labels),
            "maintenance": self.maintenance,
            "default": self.is_default,
            "host_uuid": self.host_uuid,
            "added": self.added.isoformat() if self.added else None,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
        }


# ------------------------------------------------------------------------------------ input
def parse_labels(text: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; ``""`` is no labels.  Keys and values: no spaces, commas or '='."""
    labels: dict[str, str] = {}
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise InvalidInput(
                f"label {item!r} is not KEY=VALUE",
                hint="e.g. --labels rack=r1,zone=a (letters, digits, '_.-/'; values may be empty)",
            )
        labels[key] = value
    return labels


def check_host_uri(uri: str, *, insecure_transport: bool = False) -> str:
    """A URI a host may be registered with: a libvirt URI kvmgr manages, over a transport that
    authenticates the daemon (ssh, tls, or local) unless ``insecure_transport`` says so."""
    uri = uri.strip()
    if uri.startswith(("ssh://", "tls://", "tcp://")):
        scheme = uri.partition("://")[0]
        raise InvalidInput(
            f"{uri!r} is not a libvirt URI",
            hint=f"use qemu+{scheme}://{uri.partition('://')[2].rstrip('/')}/system"
            + (
                " (or ssh://... with --setup to install libvirt there first)"
                if scheme == "ssh"
                else ""
            ),
        )
    validate_uri(uri)
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    if transport not in _SECURE_TRANSPORTS and not insecure_transport:
        raise InvalidInput(
            f"{uri!r}: qemu+{transport} neither encrypts nor authenticates the daemon",
            hint="use qemu+ssh:// or qemu+tls://, or say --insecure-transport on a trusted network",
        )
    if parts.query and "no_verify" in parts.query and not insecure_transport:
        raise InvalidInput(
            f"{uri!r} turns certificate checks off",
            hint="drop no_verify, or say --insecure-transport",
        )
    return uri


def derived_name(uri: str, taken: Iterable[str]) -> str:
    """A host name for an unregistered URI: ``local``, the URI's host, or ``test-<file>``."""
    parts = urlsplit(uri)
    if parts.scheme == "test":
        stem = os.path.splitext(os.path.basename(parts.path))[0] or "default"
        base = f"test-{stem}"
    elif not parts.hostname or is_local(uri):
        base = LOCAL if parts.path == "/system" else f"{LOCAL}-session"
    else:
        base = parts.hostname
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", base).lstrip(".-")[:56] or "host"
    used = set(taken)
    name, n = base, 2
    while name in used:
        name, n = f"{base}-{n}", n + 1
    return name


def host_identity(conn: Connection) -> str | None:
    """What the daemon says the machine is: the capabilities' host UUID (libvirtd's
    ``host_uuid``, else SMBIOS), else the sysinfo's system UUID.  A test driver file is
    identified by its real path; ``test:///default`` is a new machine each time (None)."""
    if conn.is_test_driver:
        path = urlsplit(conn.uri).path
        return None if path == "/default" else f"test:{os.path.realpath(path)}"
    from kvmgr.xml.capabilities import Capabilities

    with libvirt_errors("reading the host's capabilities"):
        caps = Capabilities.from_xml(conn.virconn.getCapabilities())
    if caps.uuid:
        return caps.uuid
    try:
        sysinfo = conn.virconn.getSysinfo(0)
    except libvirt.libvirtError:
        return None
    from lxml import etree

    found = etree.fromstring(sysinfo.encode()).xpath("string(/sysinfo/system/entry[@name='uuid'])")
    return str(found) or None


# ------------------------------------------------------------------------------------ facts
def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def host_facts(conn: Connection) -> dict[str, Any]:
    """What ``host list`` shows of a reachable host; a handful of calls, none per VM."""
    with libvirt_errors("reading the host's facts"):
        virconn = conn.virconn
        _arch, _node_mib, cpus, *_ = virconn.getInfo()
        running = virconn.numOfDomains()
        inactive = virconn.numOfDefinedDomains()
        facts: dict[str, Any] = {
            "libvirt": _version(virconn.getLibVersion()),
            "hypervisor": virconn.getType().lower(),
            "hypervisor_version": _version(virconn.getVersion()),
            "cpus": cpus,
            "vms_running": running,
            "vms_defined": running + inactive,  # transient VMs count as defined while they run
        }
    facts.update(node_memory(conn).as_dict())  # all NUMA nodes (issue 16, item 9)
    choice = conn.domain_type()
    facts["domain_type"] = choice.domain_type
    facts["domain_type_reason"] = choice.reason
    return facts


def kvmgr_vms(conn: Connection) -> list[tuple[str, str]]:
    """(name, uuid) of the VMs kvmgr made on this host (its metadata in their definitions)."""
    from kvmgr.services import vms

    made = []
    for dom, spec in vms.all_definitions(conn, include_config=False):
        meta = spec.kvmgr_metadata()
        if meta is not None and meta.created_by:
            made.append((dom.name(), dom.UUIDString()))
    return made


# ------------------------------------------------------------------------------------ registry
class HostRegistry:
    """The ``hosts`` table and the rules above.  One short session per call."""

    def __init__(self, store: Store, *, timeout: float | None = None) -> None:
        self.store = store
        self.timeout = host_timeout() if timeout is None else timeout

    # ---------------------------------------------------------------- reading
    def all(self) -> list[HostRecord]:
        with self.store.session() as session:
            rows = session.scalars(select(Host).order_by(Host.name)).all()
            return [HostRecord.of(row) for row in rows]

    def get(self, name: str) -> HostRecord:
        with self.store.session() as session:
            return HostRecord.of(self._row(session, name))

    def by_uri(self, uri: str) -> HostRecord | None:
        with self.store.session() as session:
            row = session.scalars(select(Host).where(Host.uri == uri)).first()
            return HostRecord.of(row) if row else None

    def _row(self, session: Session, name: str) -> Host:
        row = session.scalars(select(Host).where(Host.name == name)).first()
        if row is None:
            names = session.scalars(select(Host.name).order_by(Host.name)).all()
            raise NotFound(
                f"host {name!r} is not registered",
                hint=f"registered: {', '.join(names)}"
                if names
                else "add it: kvmgr host add NAME URI",
            )
        return row

    def default(self) -> HostRecord:
        """The host a command acts on without ``--host`` (registers ``local`` when none is)."""
        hosts = self.all()
        if not hosts:
            return self.ensure_uri(default_uri(), name=LOCAL)
        index = choose_default([(h.name, h.uri, h.is_default) for h in hosts])
        if index is not None:
            return hosts[index]
        raise InvalidInput(
            f"{len(hosts)} hosts are registered ({', '.join(h.name for h in hosts)}) and none is "
            "the default",
            hint="say --host NAME, or set one: kvmgr host set NAME --default",
        )

    def resolve(self, name: str | None) -> HostRecord:
        return self.default() if name is None else self.get(name)

    # ---------------------------------------------------------------- connecting
    def connect(self, name: str) -> Connection:
        """``open_host_connection``: the named host's connection, bounded and kept alive."""
        return connect_uri(self.get(name).uri, self.timeout)

    def ensure_uri(self, uri: str, *, name: str | None = None) -> HostRecord:
        """The registered host with ``uri``, else register it (under ``name`` or a derived one)
        without a reachability check: this is the "first use" of a daemon given by ``-c``."""
        validate_uri(uri)
        found = self.by_uri(uri)
        if found is not None:
            return found
        try:
            with self.store.session() as session:
                taken = session.scalars(select(Host.name)).all()
                chosen = name if name and name not in taken else derived_name(uri, taken)
                session.add(Host(name=chosen, uri=uri, labels={}))
        except IntegrityError:
            # Another process (an API replica, a CLI) registered it at the same moment.
            found = self.by_uri(uri)
            if found is None:
                raise
            return found
        return self.by_uri(uri) or self.get(chosen)

    # ---------------------------------------------------------------- changing
    def add(
        self,
        name: str,
        uri: str,
        *,
        labels: dict[str, str] | None = None,
        insecure_transport: bool = False,
        verify: bool = True,
    ) -> HostRecord:
        """Register a host after it answered (``verify``) and proved to be a new machine."""
        validate_name(name, what="host name")
        if name == AUTO_HOST:
            raise InvalidInput(
                f"{AUTO_HOST!r} cannot be a host name: '--host {AUTO_HOST}' lets placement choose",
                hint="give the host another name",
            )
        uri = check_host_uri(uri, insecure_transport=insecure_transport)
        with self.store.session() as session:
            if session.scalars(select(Host).where(Host.name == name)).first() is not None:
                raise AlreadyExists(
                    f"host {name!r} is already registered", hint="kvmgr host list shows the hosts"
                )
            same = session.scalars(select(Host).where(Host.uri == uri)).first()
            if same is not None:
                raise AlreadyExists(f"{uri} is already registered as host {same.name!r}")
        identity = None
        if verify:
            conn = connect_uri(uri, self.timeout)
            identity = host_identity(conn)
        with self.store.session() as session:
            if identity is not None:
                twin = session.scalars(select(Host).where(Host.host_uuid == identity)).first()
                if twin is not None:
                    raise AlreadyExists(
                        f"{uri} reaches the same machine as host {twin.name!r} ({twin.uri}): "
                        f"host_uuid {identity}",
                        hint="one machine is registered once; use the existing host",
                    )
            session.add(
                Host(
                    name=name,
                    uri=uri,
                    labels=labels or {},
                    host_uuid=identity,
                    last_seen=utcnow() if verify else None,
                )
            )
        return self.get(name)

    def set(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        maintenance: bool | None = None,
        default: bool | None = None,
    ) -> HostRecord:
        """Replace the labels, switch maintenance, make (or stop being) the default host."""
        with self.store.session() as session:
            row = self._row(session, name)
            if labels is not None:
                row.labels = labels
            if maintenance is not None:
                row.maintenance = maintenance
            if default:
                session.execute(update(Host).where(Host.id != row.id).values(is_default=False))
            if default is not None:
                row.is_default = default
        return self.get(name)

    def remove(self, name: str, *, force: bool = False) -> list[str]:
        """Forget a host.  Refused while VMs kvmgr made live there, unless ``force``: then kvmgr
        forgets what it recorded of objects there (their owners) and leaves the VMs themselves
        alone.  A host
        that does not answer cannot show it has none: refused too, unless ``force``.
        Returns the names of the VMs forgotten."""
        record = self.get(name)
        made: list[tuple[str, str]] = []
        try:
            conn = connect_uri(record.uri, self.timeout)
            made = kvmgr_vms(conn)
        except (InvalidInput, NotFound):
            raise
        except Exception as err:  # unreachable: we cannot tell what lives there
            if not force:
                raise InvalidState(
                    f"host {name!r} does not answer ({err}), so kvmgr cannot tell which of its VMs "
                    "live there",
                    hint=f"bring it back, or forget it anyway: kvmgr host remove {name} --force",
                ) from err
        if made and not force:
            listed = ", ".join(vm for vm, _uuid in made[:10]) + (" ..." if len(made) > 10 else "")
            raise InvalidState(
                f"host {name!r} has {len(made)} VM(s) kvmgr made: {listed}",
                hint="move or delete them first, or forget them (they keep running): --force",
            )
        with self.store.session() as session:
            # everything kvmgr recorded of objects there (owners of VMs, volumes, networks...)
            session.execute(delete(ObjectOwner).where(ObjectOwner.host == name))
            session.delete(self._row(session, name))
        forget_connection(record.uri)
        return [vm for vm, _uuid in made]

    # ---------------------------------------------------------------- status of many
    def statuses(self, hosts: list[HostRecord]) -> list[dict[str, Any]]:
        """Each host's record and facts (or why it is down), queried in parallel, each bounded."""

        def probe(host: HostRecord) -> dict[str, Any]:
            conn = connect_uri(host.uri, self.timeout)
            facts = host_facts(conn)
            if host.host_uuid is None:  # registered on first use, unverified: learn it now
                facts["host_uuid"] = host_identity(conn)
            return facts

        outcomes = fan_out(hosts, probe, self.timeout)
        answered = {
            h.name: (o.value or {}).get("host_uuid")
            for h, o in zip(hosts, outcomes, strict=True)
            if o.ok
        }
        self.seen(answered)
        return [status_row(h, o) for h, o in zip(hosts, outcomes, strict=True)]

    def seen(self, hosts: dict[str, str | None] | list[str]) -> None:
        """Record that these hosts answered now, and the identity of those that had none."""
        names = list(hosts)
        if not names:
            return
        with self.store.session() as session:
            session.execute(update(Host).where(Host.name.in_(names)).values(last_seen=utcnow()))
            if isinstance(hosts, dict):
                for name, identity in hosts.items():
                    if identity is not None:
                        session.execute(
                            update(Host)
                            .where(Host.name == name, Host.host_uuid.is_(None))
                            .values(host_uuid=identity)
                        )

    # ---------------------------------------------------------------- VMs of many
    def fleet_vms(
        self, hosts: list[HostRecord] | None = None, *, with_ips: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every VM of every host (``vm list --all-hosts``): one bulk listing per host
        (:func:`kvmgr.services.vms.list_vms`), all hosts at once, each within the bound.

        Returns (VM rows with their ``host``, rows of the hosts that did not answer).  A host
        that is down or hangs costs the others nothing: its row says why.
        """
        hosts = (self.all() or [self.default()]) if hosts is None else hosts
        rows, down = list_fleet([(h.name, h.uri) for h in hosts], self.timeout, with_ips=with_ips)
        failed = {d["host"] for d in down}
        self.seen([h.name for h in hosts if h.name not in failed])
        return rows, down


def status_row(host: HostRecord, outcome: Outcome[dict[str, Any]]) -> dict[str, Any]:
    row = host.as_dict()
    if outcome.ok and outcome.value is not None:
        row.update({"reachable": True, "state": "maintenance" if host.maintenance else "up"})
        row.update(outcome.value)
    else:
        row.update({"reachable": False, "state": "down", "error": reason(outcome)})
    row["seconds"] = round(outcome.seconds, 3)
    return row
