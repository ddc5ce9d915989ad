"""A stored create request with ``unattended`` or ``image`` (the API's task parameters) run.

The parameters are what ``POST /api/v1/vms`` queued: passwords already replaced by their
SHA-512 crypt hashes (``password_hash``, ``root_password_hash``) before the task was stored, so
neither the task row nor its result ever holds one in clear.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmgr.connect import Connection
from kvmgr.crypt import is_sha512_crypt
from kvmgr.errors import InvalidInput
from kvmgr.services.create import CreateResult, VMSpec
from kvmgr.services.steps import Steps


def wants_provision(params: dict[str, Any]) -> bool:
    return bool(params.get("unattended") is not None or params.get("image"))


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
) -> tuple[dict[str, Any], CreateResult]:
    """Create the VM the parameters ask for; the task result and the plain create result."""
    unattended: dict[str, Any] = params.get("unattended") or {}
    image = params.get("image")
    if params.get("unattended") is not None and image:
        raise InvalidInput("unattended installs from an iso; an image needs no install")
    if image:
        return _from_image(conn, spec, str(image), params.get("cloud_init"), progress, steps)
    from kvmgr.services.installs import create_unattended
    from kvmgr.services.unattended import UnattendedRequest

    request = UnattendedRequest(
        user=unattended.get("user"),
        password_hash=_hash(unattended, "password_hash"),
        root_password_hash=_hash(unattended, "root_password_hash"),
        ssh_keys=list(unattended.get("ssh_keys") or []),
        hostname=unattended.get("hostname"),
        timezone=str(unattended.get("timezone") or "UTC"),
        locale=str(unattended.get("locale") or "en_US"),
        packages=list(unattended.get("packages") or []),
        profile=str(unattended.get("profile") or "minimal"),
        product_key=unattended.get("product_key"),
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
