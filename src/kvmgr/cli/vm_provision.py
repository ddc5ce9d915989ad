"""``vm create --unattended`` and ``vm create --image``: the options turned into service calls."""

from __future__ import annotations

from typing import Any

from kvmgr.cli.common import conn
from kvmgr.cli.output import status
from kvmgr.errors import InvalidInput
from kvmgr.services.create import VMSpec
from kvmgr.services.steps import Steps

_INSTALL_ONLY = (
    "root_password_file", "timezone", "locale", "packages", "script", "product_key",
    "product_key_file",
)  # fmt: skip
_CLOUD_ONLY = ("user_data", "network_config")


def provision(spec: VMSpec, options: dict[str, Any], steps: Steps) -> dict[str, Any]:
    """Run the install or the cloud-image create, each step recorded in ``steps`` (the
    operation's journal) before it acts."""
    if options["unattended"] and options["image"]:
        raise InvalidInput("--unattended installs from --iso; --image needs no install")
    if options["image"]:
        return _from_image(spec, options, steps)
    return _unattended(spec, options, steps)


def _unattended(spec: VMSpec, options: dict[str, Any], steps: Steps) -> dict[str, Any]:
    from kvmgr.services.installs import create_unattended
    from kvmgr.services.unattended import UnattendedRequest

    for key in _CLOUD_ONLY:
        if options[key]:
            raise InvalidInput(f"--{key.replace('_', '-')} goes with --image --cloud-init")
    wait = "installed" if spec.wait == "none" else spec.wait
    request = UnattendedRequest(
        user=options["user"],
        password_file=options["password_file"],
        root_password_file=options["root_password_file"],
        ssh_key_files=list(options["ssh_keys"]),
        hostname=options["hostname"],
        timezone=options["timezone"],
        locale=options["locale"],
        packages=[p.strip() for p in (options["packages"] or "").split(",") if p.strip()],
        profile=options["profile"],
        script_file=options["script"],
        product_key=_product_key(options),
    )
    with status(f"creating {spec.name}") as spinner:
        result = create_unattended(
            conn(), spec, request, wait=wait, steps=steps, progress=spinner.update
        )
    return result.as_dict()


def _product_key(options: dict[str, Any]) -> str | None:
    """The Windows product key, from the option or (kept out of process listings) a file."""
    from kvmgr.services.unattended import read_secret_file

    key, path = options.get("product_key"), options.get("product_key_file")
    if key and path:
        raise InvalidInput("give --product-key or --product-key-file, not both")
    return read_secret_file(path, "product key file").strip() if path else key


def _from_image(spec: VMSpec, options: dict[str, Any], steps: Steps) -> dict[str, Any]:
    from kvmgr.crypt import sha512_crypt
    from kvmgr.services.cloud_vms import create_from_image
    from kvmgr.services.cloudinit import CloudInitRequest
    from kvmgr.services.unattended import read_secret_file, read_ssh_keys

    for key in _INSTALL_ONLY:
        if options.get(key) and key not in ("timezone", "locale"):
            raise InvalidInput(f"--{key.replace('_', '-')} goes with --unattended")
    wants_seed = options["cloud_init"] or any(
        options[key] for key in ("user", "password_file", "ssh_keys", "user_data", "network_config")
    )
    if wants_seed and not options["cloud_init"]:
        raise InvalidInput("cloud-init options need --cloud-init", hint="add --cloud-init")
    request = None
    if wants_seed:
        password = (
            read_secret_file(options["password_file"], "password file")
            if options["password_file"]
            else None
        )
        if password and not options["user"]:
            raise InvalidInput("--password-file needs --user")
        request = CloudInitRequest(
            user=options["user"],
            password_hash=sha512_crypt(password) if password else None,
            ssh_keys=[key for path in options["ssh_keys"] for key in read_ssh_keys(path)],
            hostname=options["hostname"],
            user_data_file=options["user_data"],
            network_config_file=options["network_config"],
        )
    with status(f"creating {spec.name}") as spinner:
        result = create_from_image(
            conn(), spec, options["image"], request, steps=steps, progress=spinner.update
        )
    return result.as_dict()
