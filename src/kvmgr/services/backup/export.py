"""Where a pull-mode backup job's NBD server listens, and how kvmgr reaches it.

* **This machine** (``qemu:///system``, or any URI naming no other host): a UNIX socket in a
  private scratch directory under /var/tmp that also holds QEMU's scratch files.  Nothing
  leaves the machine.
* **Another host over qemu+tls** (or qemu+tcp): QEMU's NBD server listens on TCP at the address
  kvmgr reaches libvirtd by, with TLS (``tls='yes'``: libvirt gives QEMU the x509 credentials
  of ``backup_tls_x509_cert_dir`` in the host's qemu.conf, which defaults to
  ``default_tls_x509_cert_dir``).  kvmgr's client presents the same client certificate it
  presents to that libvirtd: the files of the URI's ``pkipath=`` directory, else libvirt's
  default locations.  The export is the VM's whole disk, so it never travels in clear.
  Scratch files lie beside each disk image (``<image>.kvmgr-scratch-<point>``): the host's
  /var/tmp is not ours to write, and libvirt creates, labels and removes them itself.
* **Another host over qemu+ssh** is refused with a hint (docs/ARCHITECTURE.md says why).

The TCP port comes from :data:`PORTS`, starting at a place derived from the VM's UUID and
moving on whenever QEMU cannot bind it, so concurrent backups on one host (and other users of
a port) never clash: a bind is atomic, and libvirt rolls back a failed ``backupBegin``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import libvirt
from lxml import etree

from kvmgr.connect import Connection
from kvmgr.connect.uri import is_local
from kvmgr.errors import InvalidInput, KvmgrError, libvirt_errors
from kvmgr.services.backup import nbd
from kvmgr.services.steps import recovery_action

SCRATCH_PREFIX = "kvmgr-backup-"
#: Marks a scratch file beside a remote disk image; recovery removes nothing without it.
SCRATCH_MARK = ".kvmgr-scratch-"
#: TCP ports of remote backup exports: NBD's registered port and the 99 above it.  A firewall
#: between kvmgr and its hosts must let these through.
PORTS = range(10809, 10909)
_SSH_TRANSPORTS = {"ssh", "libssh", "libssh2"}


@dataclass(frozen=True)
class ClientCredentials:
    """The CA and client certificate kvmgr presents to a host's TLS NBD server."""

    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        missing = [str(p) for p in (self.ca, self.cert, self.key) if not p.is_file()]
        if missing:
            raise InvalidInput(
                f"the TLS files for the backup export are missing: {', '.join(missing)}",
                hint="give the host's URI ?pkipath=DIR holding cacert.pem, clientcert.pem and "
                "clientkey.pem (the files libvirt uses for qemu+tls)",
            )
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


@dataclass(frozen=True)
class Export:
    """The listening end of one backup job: ``host`` is None for a UNIX socket here."""

    host: str | None
    credentials: ClientCredentials | None = None

    @property
    def local(self) -> bool:
        return self.host is None


def plan(conn: Connection) -> Export:
    """How a backup job of a VM on ``conn``'s host is exported (refuses qemu+ssh)."""
    parts = urlsplit(conn.uri)
    transport = parts.scheme.partition("+")[2]
    if is_local(conn.uri) or transport == "unix":
        return Export(None)
    if transport in _SSH_TRANSPORTS:
        raise InvalidInput(
            f"backing up from {parts.hostname} over {parts.scheme} is not supported: the backup "
            "export would have to cross the network without TLS",
            hint=f"register the host as qemu+tls://{parts.hostname}/system?pkipath=DIR (its "
            "qemu.conf needs backup_tls_x509_cert_dir or default_tls_x509_cert_dir)",
        )
    assert parts.hostname  # validate_uri: a remote transport names its host
    return Export(parts.hostname, client_credentials(conn.uri))


def client_credentials(uri: str) -> ClientCredentials:
    """The files libvirt's client uses for ``uri`` (virNetTLSContextLocateCredentials)."""
    pkipath = parse_qs(urlsplit(uri).query).get("pkipath")
    if pkipath:
        return _in(Path(pkipath[0]))
    user = Path.home() / ".pki" / "libvirt"
    if os.geteuid() != 0 and (user / "clientcert.pem").is_file():
        return _in(user)
    return ClientCredentials(
        Path("/etc/pki/CA/cacert.pem"),
        Path("/etc/pki/libvirt/clientcert.pem"),
        Path("/etc/pki/libvirt/private/clientkey.pem"),
    )


def _in(base: Path) -> ClientCredentials:
    return ClientCredentials(base / "cacert.pem", base / "clientcert.pem", base / "clientkey.pem")


def ports(vm_uuid: str) -> list[int]:
    """The ports to try for ``vm_uuid``'s export, in order: all of :data:`PORTS`, rotated."""
    start = uuidlib.UUID(vm_uuid).int % len(PORTS)
    return [PORTS[(start + i) % len(PORTS)] for i in range(len(PORTS))]


def port_taken(err: KvmgrError | libvirt.libvirtError) -> bool:
    """True when ``backupBegin`` failed because QEMU could not bind the port."""
    text = err.get_error_message() if isinstance(err, libvirt.libvirtError) else str(err)
    return "already in use" in (text or "").lower()


def scratch_file(export: Export, scratch_dir: str, point: str, target: str, source: str) -> str:
    if export.local:
        return os.path.join(scratch_dir, f"{target}.scratch")
    return f"{source}{SCRATCH_MARK}{point}"


def server_element(root: Any, export: Export, sock: str, port: int) -> None:
    """The ``<server>`` of a ``<domainbackup>``: a UNIX socket, or TCP with TLS."""
    if export.local:
        etree.SubElement(root, "server", transport="unix", socket=sock)
    else:
        assert export.host
        etree.SubElement(
            root, "server", transport="tcp", tls="yes", name=export.host, port=str(port)
        )


@contextlib.contextmanager
def connected(
    export: Export, sock: str, port: int, name: str, contexts: list[str]
) -> Iterator[nbd.NBDClient]:
    """A client of export ``name`` of the running backup job."""
    where = sock if export.local else f"{export.host}:{port}"
    try:
        if export.local:
            client = nbd.NBDClient(sock, name, contexts)
        else:
            assert export.host and export.credentials
            client = nbd.NBDClient(
                (export.host, port), name, contexts, tls=export.credentials.context(), timeout=60
            )
    except OSError as err:
        raise KvmgrError(
            f"cannot reach the backup export {name} at {where}: {err}",
            hint=f"kvmgr must reach TCP ports {PORTS.start}-{PORTS.stop - 1} of the host"
            if not export.local
            else None,
        ) from err
    try:
        yield client
    finally:
        client.close()


def give_to_qemu(dom: libvirt.virDomain, path: str) -> None:
    """QEMU runs as its own user and must create the NBD socket and scratch files in ``path``.

    The owner comes from the running VM's DAC label, which is what libvirt gave QEMU; the
    directory stays closed to everyone else, since the socket serves the VM's whole disk.
    """
    with libvirt_errors(f"reading VM {dom.name()}"):
        live = etree.fromstring(dom.XMLDesc(0).encode())
    label = live.findtext("./seclabel[@model='dac']/label")
    if not label or ":" not in label:
        return
    uid, gid = (int(part.lstrip("+")) for part in label.split(":", 1))
    os.chown(path, uid, gid)
    os.chmod(path, 0o700)


# ------------------------------------------------------------------------------ recovery
@recovery_action("backup.scratch.remove")
def remove_scratch_dir(_conn: Connection, args: dict[str, Any]) -> None:
    path = Path(args["path"])
    if path.name.startswith(SCRATCH_PREFIX):  # never anything else, whatever a journal says
        shutil.rmtree(path, ignore_errors=True)


@recovery_action("backup.scratch.files.remove")
def remove_scratch_files(conn: Connection, args: dict[str, Any]) -> None:
    """Remove scratch files a remote backup job left beside its disks, through libvirt.

    libvirt unlinks them when the job ends; this covers a daemon that died first.  A file
    outside every storage pool cannot be reached through libvirt and stays (the host's
    administrator sees its name).
    """
    with libvirt_errors("removing a backup's scratch files"):
        for path in args["paths"]:
            if SCRATCH_MARK not in os.path.basename(path):
                continue  # never anything else, whatever a journal says
            pool = _pool_of(conn, os.path.dirname(path))
            if pool is None:
                continue
            pool.refresh(0)
            try:
                vol = pool.storageVolLookupByName(os.path.basename(path))
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    continue
                raise
            vol.delete(0)


def _pool_of(conn: Connection, directory: str) -> libvirt.virStoragePool | None:
    for pool in conn.virconn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        target = etree.fromstring(pool.XMLDesc(0).encode()).findtext("./target/path")
        if target and os.path.normpath(target) == os.path.normpath(directory):
            return pool
    return None
