"""Keys and certificates of a lab (see :mod:`kvmgr.host.lab`): an SSH key pair and a TLS CA.

Made with ``ssh-keygen`` and ``openssl`` (gnutls' certtool is not on a Debian 12 host by default).
Keys are ECDSA P-256 or Ed25519: generating them takes milliseconds, where RSA would take most of
the lab's start-up time.  libvirt checks key usage and purpose of its certificates
(``virNetTLSContextCheckCertKeyUsage``): a CA needs keyCertSign, a server or client certificate
digitalSignature and keyEncipherment, and the purpose serverAuth or clientAuth.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kvmgr.errors import HostError

if TYPE_CHECKING:
    from kvmgr.host.lab import Lab

#: File names libvirt looks for in a ``pkipath=`` directory (client) and that libvirtd.conf names.
CA_CERT = "cacert.pem"
CLIENT_CERT = "clientcert.pem"
CLIENT_KEY = "clientkey.pem"
SERVER_CERT = "servercert.pem"
SERVER_KEY = "serverkey.pem"
#: The directory of a host's qemu.conf ``backup_tls_x509_cert_dir``, with the names QEMU's
#: tls-creds-x509 object looks for: backup jobs export their NBD server with it.
QEMU_DIR = "qemu"
QEMU_FILES = {CA_CERT: "ca-cert.pem", SERVER_CERT: "server-cert.pem", SERVER_KEY: "server-key.pem"}

_DAYS = "30"
_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def _run(argv: Sequence[str], doing: str) -> None:
    try:
        subprocess.run(list(argv), check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as err:
        detail = err.stderr.decode(errors="replace").strip()
        raise HostError(f"{doing} failed: {detail}") from err
    except FileNotFoundError as err:
        raise HostError(
            f"{doing} failed: {argv[0]} is not installed", hint="run scripts/install-system-deps.sh"
        ) from err


def ssh_keypair(path: Path, comment: str) -> Path:
    """An Ed25519 key without passphrase at ``path`` (and ``path``.pub)."""
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    _run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        f"making SSH key {path}",
    )
    return path


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / CA_CERT, directory / "cakey.pem"
    _run(
        [
            "openssl", "req", "-x509", *_KEY, "-days", _DAYS,
            "-keyout", str(key), "-out", str(cert), "-subj", f"/O=kvmgr lab/CN={name} CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        "making the lab CA",
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def issue(
    ca: tuple[Path, Path],
    cert: Path,
    key: Path,
    *,
    common_name: str,
    purpose: str,
    addresses: Sequence[str] = (),
    names: Sequence[str] = (),
) -> None:
    """A certificate for ``purpose`` (serverAuth or clientAuth) signed by ``ca``.

    Server certificates name the host's address and host name as subject alternative names:
    libvirt's client checks the URI's host against them.
    """
    cert.parent.mkdir(parents=True, exist_ok=True)
    request = cert.with_suffix(".csr")
    _run(
        ["openssl", "req", "-new", *_KEY, "-keyout", str(key), "-out", str(request),
         "-subj", f"/O=kvmgr lab/CN={common_name}"],
        f"making the key of {common_name}",
    )  # fmt: skip
    extensions = cert.with_suffix(".ext")
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={purpose}",
    ]
    alternatives = [f"IP:{a}" for a in addresses] + [f"DNS:{n}" for n in names]
    if alternatives:
        lines.append("subjectAltName=" + ",".join(alternatives))
    extensions.write_text("\n".join(lines) + "\n")
    ca_cert, ca_key = ca
    _run(
        ["openssl", "x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey",
         str(ca_key), "-CAcreateserial", "-days", _DAYS, "-out", str(cert),
         "-extfile", str(extensions)],
        f"signing the certificate of {common_name}",
    )  # fmt: skip
    request.unlink()
    extensions.unlink()
    key.chmod(0o600)


def make_lab_credentials(lab: Lab) -> None:
    """The lab's SSH client key, host keys and known_hosts, ssh wrapper, CA and certificates."""
    ssh = lab.root / "ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    ssh_keypair(lab.ssh_key, f"kvmgr lab {lab.name}")
    (ssh / "authorized_keys").write_text(lab.ssh_key.with_suffix(".pub").read_text())
    known = []
    for host in lab.hosts:
        (host.data / "ssh").mkdir(parents=True, exist_ok=True)
        key = ssh_keypair(host.data / "ssh" / "host_ed25519", host.name)
        public = " ".join(key.with_suffix(".pub").read_text().split()[:2])
        known.append(f"{host.address},{host.name} {public}\n")
    (ssh / "known_hosts").write_text("".join(known))
    # libvirt's ssh transport takes the ssh program from the URI (command=) but has no option for
    # a known_hosts file: this wrapper verifies host keys against the lab's own list.
    lab.ssh_command.write_text(
        "#!/bin/sh\nexec ssh -o UserKnownHostsFile="
        + shlex.quote(str(ssh / "known_hosts"))
        + " -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes"
        ' -o IdentitiesOnly=yes -o ConnectTimeout=5 "$@"\n'
    )
    lab.ssh_command.chmod(0o755)
    ca = make_ca(lab.root / "pki", lab.name)
    lab.client_pki.mkdir(parents=True, exist_ok=True)
    shutil.copy(ca[0], lab.client_pki / CA_CERT)
    issue(ca, lab.client_pki / CLIENT_CERT, lab.client_pki / CLIENT_KEY,
                  common_name=f"{lab.name}-client", purpose="clientAuth")  # fmt: skip
    for host in lab.hosts:
        pki = host.data / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        shutil.copy(ca[0], pki / CA_CERT)
        # clientAuth too: a host is the client when it drives a peer-to-peer migration.
        issue(ca, pki / SERVER_CERT, pki / SERVER_KEY,
                      common_name=host.name, purpose="serverAuth,clientAuth",
                      addresses=[host.address], names=[host.name])  # fmt: skip
        shutil.copy(pki / SERVER_CERT, pki / CLIENT_CERT)
        shutil.copy(pki / SERVER_KEY, pki / CLIENT_KEY)
        _qemu_credentials(pki)


def _qemu_credentials(pki: Path) -> None:
    """The host's server certificate again, for QEMU: it runs as libvirt-qemu, not root, so its
    copy of the key is readable by that group (libvirt does not relabel TLS files)."""
    qemu = pki / QEMU_DIR
    qemu.mkdir(exist_ok=True)
    for ours, theirs in QEMU_FILES.items():
        shutil.copy(pki / ours, qemu / theirs)
        shutil.chown(qemu / theirs, "root", "libvirt-qemu")
        (qemu / theirs).chmod(0o640)
