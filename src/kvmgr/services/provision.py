"""A stored create request with ``unattended`` or ``image`` (the API's task parameters) run.

The parameters are what ``POST /api/v1/vms`` queued: passwords already replaced by their
SHA-512 crypt hashes (``password_hash``, ``root_password_hash``) before the task was stored, so
neither the task row nor its result ever holds one in clear.  Windows needs the passwords
themselves: for a Windows target the API stores them (and the product key) as the task's
secrets (kvmgr.control.task_secrets), the params name which (``unattended.secrets``), and the
handler passes the values it took here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kvmgr.connect import Connection
from kvmgr.crypt import is_sha512_crypt
from kvmgr.errors import InvalidInput, KvmgrError, OperationFailed
from kvmgr.services.create import CreateResult, VMSpec
from kvmgr.services.steps import Steps


def wants_provision(params: dict[str, Any]) -> bool:
    return bool(params.get("unattended") is not None or params.get("image"))


def targets_windows(conn: Connection, iso: str | None, os_id: str) -> bool:
    """Whether a create of ``iso`` as ``os_id`` installs Windows: the OS named, else the one the
    ISO's volume descriptor shows (osinfo-db's ``winnt`` family).  False when it cannot be told
    (no ISO, an unreadable or unknown one): the create is then treated as any other."""
    from kvmgr.osinfo.db import get_db

    if os_id != "auto":
        entry = get_db().get(os_id)
        return entry is not None and entry.family == "winnt"
    if not iso:
        return False
    from kvmgr.services.create import _resolve_iso  # the ISO library's names and paths
    from kvmgr.services.install_media import identify_iso

    try:
        _descriptor, entry, _media = identify_iso(conn, _resolve_iso(conn, iso))
    except KvmgrError:
        return False
    return entry.family == "winnt"


def _hash(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not is_sha512_crypt(value):
        raise InvalidInput(f"{key} is not a SHA-512 crypt hash")
    return value


def provision(
    conn: Connection,
    spec: VMSpec,
    params: dict[str, Any],
    progress: Callable[[str], None],
    *,
    steps: Steps | None = None,
    secrets: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], CreateResult]:
    """Create the VM the parameters ask for; the task result and the plain create result.
    ``secrets`` are the values the task's ``unattended.secrets`` names (Windows only)."""
    unattended: dict[str, Any] = params.get("unattended") or {}
    image = params.get("image")
    if params.get("unattended") is not None and image:
        raise InvalidInput("unattended installs from an iso; an image needs no install")
    if image:
        return _from_image(conn, spec, str(image), params.get("cloud_init"), progress, steps)
    from kvmgr.services.installs import create_unattended
    from kvmgr.services.unattended import UnattendedRequest

    given = dict(secrets or {})
    missing = [name for name in unattended.get("secrets") or [] if name not in given]
    if missing:
        # Never install without what the request asked for (a Windows user with no password).
        raise OperationFailed(
            f"the secrets this create was submitted with ({', '.join(missing)}) are gone",
            hint="a task's secrets are handed to its worker once; submit the create again",
        )
    request = UnattendedRequest(
        user=unattended.get("user"),
        password=given.get("password"),
        root_password=given.get("root_password"),
        password_hash=_hash(unattended, "password_hash"),
        root_password_hash=_hash(unattended, "root_password_hash"),
        ssh_keys=list(unattended.get("ssh_keys") or []),
        hostname=unattended.get("hostname"),
        timezone=str(unattended.get("timezone") or "UTC"),
        locale=str(unattended.get("locale") or "en_US"),
        packages=list(unattended.get("packages") or []),
        profile=str(unattended.get("profile") or "minimal"),
        product_key=given.get("product_key"),
    )
    wait = "ready" if params.get("wait") == "ready" else "installed"
    result = create_unattended(conn, spec, request, wait=wait, progress=progress, steps=steps)
    return result.as_dict(), result.vm


def _from_image(
    conn: Connection,
    spec: VMSpec,
    image: str,
    options: dict[str, Any] | None,
    progress: Callable[[str], None],
    steps: Steps | None,
) -> tuple[dict[str, Any], CreateResult]:
    from kvmgr.services.cloud_vms import create_from_image
    from kvmgr.services.cloudinit import CloudInitRequest
    from kvmgr.services.unattended import check_ssh_key

    request = None
    if options is not None:
        password_hash = _hash(options, "password_hash")
        if password_hash and not options.get("user"):
            raise InvalidInput("a cloud-init password needs a user", hint="set cloud_init.user")
        request = CloudInitRequest(
            user=options.get("user"),
            password_hash=password_hash,
            ssh_keys=[check_ssh_key(str(key)) for key in options.get("ssh_keys") or []],
            hostname=options.get("hostname"),
            user_data_text=options.get("user_data"),
            network_config_text=options.get("network_config"),
        )
    result = create_from_image(conn, spec, image, request, progress=progress, steps=steps)
    return result.as_dict(), result.vm
