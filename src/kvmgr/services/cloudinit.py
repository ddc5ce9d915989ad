"""cloud-init NoCloud seeds: meta-data, user-data and network-config on a small ``cidata`` ISO.

The seed is made in-process with pycdlib and uploaded as a volume through the libvirt stream, so
it works the same against a remote host.  Its volume name carries a digest of its content: two
VMs with the same seed share nothing by accident, and a seed is never silently overwritten.

network-config matches every NIC by its MAC address (``match: macaddress`` plus ``set-name``),
never by a guessed kernel name: NIC names differ between guest kernels, drivers and udev rules.
"""

from __future__ import annotations

import email.mime.multipart
import email.mime.text
import hashlib
import io
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from kvmgr.errors import InvalidInput, NotFound
from kvmgr.names import validate_name

SEED_LABEL = "cidata"
_MAC_RE = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")
_MAX_FILE = 1024 * 1024
# One line per value: a long SSH key folded over lines reads the same to cloud-init, but not
# to simpler readers of the seed (the demo guest, people)
_WIDTH = 1 << 16
#: user-data keys whose lists kvmgr's options extend instead of replacing.
_LIST_KEYS = ("users", "ssh_authorized_keys", "runcmd", "packages", "write_files", "bootcmd")


@dataclass
class CloudInitRequest:
    """``vm create --cloud-init`` options (files are read by :func:`build_seed`)."""

    user: str | None = None
    password_hash: str | None = None
    ssh_keys: list[str] = field(default_factory=list)
    hostname: str | None = None
    user_data_file: str | None = None
    network_config_file: str | None = None
    #: The API's way: the files' content instead of their paths.
    user_data_text: str | None = None
    network_config_text: str | None = None


@dataclass(frozen=True)
class Seed:
    meta_data: str
    user_data: str
    network_config: str
    iso: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.iso).hexdigest()[:16]


def _parse_yaml(text: str, what: str) -> tuple[str, Any]:
    if len(text) > _MAX_FILE:
        raise InvalidInput(f"{what} is larger than 1 MiB")
    try:
        return text, yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InvalidInput(f"{what} is not valid YAML: {err}") from err


def _read_yaml_file(path: str, what: str) -> tuple[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(_MAX_FILE + 1)
    except FileNotFoundError as err:
        raise NotFound(f"{what} {path!r} does not exist", hint="give an existing file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"cannot read {what} {path!r}: {err}") from err
    if len(text) > _MAX_FILE:
        raise InvalidInput(f"{what} {path!r} is larger than 1 MiB")
    try:
        return text, yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InvalidInput(f"{what} {path!r} is not valid YAML: {err}") from err


# ------------------------------------------------------------------ meta-data and user-data
def meta_data(instance_id: str, hostname: str) -> str:
    return yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname})


def user_data(request: CloudInitRequest, hostname: str) -> str:
    """The options as cloud-config, merged with the user's file (options extend its lists)."""
    generated: dict[str, Any] = {"hostname": hostname, "fqdn": hostname}
    if request.user:
        user: dict[str, Any] = {
            "name": request.user,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "shell": "/bin/sh",
            "lock_passwd": request.password_hash is None,
        }
        if request.password_hash:
            user["passwd"] = request.password_hash
        if request.ssh_keys:
            user["ssh_authorized_keys"] = list(request.ssh_keys)
        generated["users"] = ["default", user]
    elif request.ssh_keys:
        generated["ssh_authorized_keys"] = list(request.ssh_keys)
    if request.user_data_text is not None:
        text, data = _parse_yaml(request.user_data_text, "user-data")
    elif request.user_data_file:
        text, data = _read_yaml_file(request.user_data_file, "user-data file")
    else:
        return "#cloud-config\n" + yaml.safe_dump(generated, sort_keys=False, width=_WIDTH)
    if text.startswith("#cloud-config"):
        if not isinstance(data, dict):
            raise InvalidInput(
                f"user-data file {request.user_data_file!r} is not a cloud-config mapping"
            )
        return "#cloud-config\n" + yaml.safe_dump(
            _merge(data, generated), sort_keys=False, width=_WIDTH
        )
    if not text.startswith(("#!", "#include", "#cloud-boothook", "Content-Type:")):
        raise InvalidInput(
            f"user-data file {request.user_data_file!r} is not user-data cloud-init reads",
            hint="start it with #cloud-config (or #! for a script)",
        )
    return _multipart(
        text, "#cloud-config\n" + yaml.safe_dump(generated, sort_keys=False, width=_WIDTH)
    )


def _merge(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    merged = dict(theirs)
    for key, value in ours.items():
        if key in _LIST_KEYS and isinstance(merged.get(key), list):
            merged[key] = [*merged[key], *(v for v in value if v not in merged[key])]
        elif key not in merged or key in ("hostname", "fqdn"):
            merged[key] = value
    return merged


def _multipart(script: str, config: str) -> str:
    message = email.mime.multipart.MIMEMultipart()
    for text, subtype in ((config, "cloud-config"), (script, "x-shellscript")):
        part = email.mime.text.MIMEText(text, subtype, "utf-8")
        message.attach(part)
    return message.as_string()


# ------------------------------------------------------------------ network-config
def network_config(
    macs: Sequence[str], user_file: str | None = None, user_text: str | None = None
) -> str:
    """v2 network-config: DHCP on every NIC by default; the user's file, with each ethernet
    matched to the VM's NICs in order by MAC address, when given."""
    ethernets: dict[str, Any]
    if user_file is None and user_text is None:
        ethernets = {
            f"nic{index}": {
                "match": {"macaddress": mac},
                "set-name": f"eth{index}",
                "dhcp4": True,
            }
            for index, mac in enumerate(macs)
        }
        return yaml.safe_dump({"version": 2, "ethernets": ethernets}, sort_keys=False, width=_WIDTH)
    if user_text is not None:
        user_file = "(given)"
        _text, data = _parse_yaml(user_text, "network-config")
    else:
        assert user_file is not None
        _text, data = _read_yaml_file(user_file, "network-config file")
    if isinstance(data, dict) and "network" in data and len(data) == 1:
        data = data["network"]
    check_network_config(data, user_file, macs=None)
    ethernets = dict(data.get("ethernets") or {})
    if len(ethernets) > len(macs):
        raise InvalidInput(
            f"network-config {user_file!r} has {len(ethernets)} ethernets, the VM {len(macs)} NICs",
            hint="give one ethernet entry per --network",
        )
    for (name, given_entry), mac in zip(list(ethernets.items()), macs, strict=False):
        entry = dict(given_entry or {})
        given = (entry.get("match") or {}).get("macaddress")
        if given and given.lower() not in macs:
            raise InvalidInput(
                f"network-config {user_file!r}: {name} matches MAC {given}, no NIC of the VM",
                hint="leave match out: kvmgr matches entries to NICs in order",
            )
        entry.setdefault("match", {"macaddress": mac})
        entry.setdefault("set-name", name)
        ethernets[name] = entry
    result = {**data, "ethernets": ethernets}
    check_network_config(result, user_file, macs=macs)
    return yaml.safe_dump(result, sort_keys=False, width=_WIDTH)


def check_network_config(data: Any, what: str, *, macs: Sequence[str] | None) -> None:
    """The parts of network-config v2 kvmgr writes or reads, checked against the v2 spec."""

    def refuse(problem: str) -> None:
        raise InvalidInput(f"network-config {what!r}: {problem}", hint="see netplan's v2 format")

    if not isinstance(data, dict) or data.get("version") != 2:
        refuse("needs 'version: 2' at the top")
    allowed = {"version", "ethernets", "bonds", "bridges", "vlans", "renderer"}
    if unknown := set(data) - allowed:
        refuse(f"unknown keys {sorted(unknown)}")
    ethernets = data.get("ethernets") or {}
    if not isinstance(ethernets, dict):
        refuse("'ethernets' must be a mapping of names to settings")
    for name, entry in ethernets.items():
        problem = _ethernet_problem(name, entry or {}, must_match=macs is not None)
        if problem:
            refuse(problem)


def _ethernet_problem(name: str, entry: Any, *, must_match: bool) -> str | None:
    if not isinstance(entry, dict):
        return f"{name} must be a mapping"
    mac = (entry.get("match") or {}).get("macaddress")
    if mac is not None and not _MAC_RE.fullmatch(str(mac).lower()):
        return f"{name}: {mac!r} is not a MAC address"
    if must_match and (mac is None or "set-name" not in entry):
        return f"{name} is not matched by MAC address"
    for key in ("dhcp4", "dhcp6"):
        if key in entry and not isinstance(entry[key], bool):
            return f"{name}: {key} must be true or false"
    for address in entry.get("addresses") or []:
        try:
            ipaddress.ip_interface(str(address))
        except ValueError:
            return f"{name}: {address!r} is not an address/prefix"
        if "/" not in str(address):
            return f"{name}: {address!r} needs a prefix length (/24)"
    for key in ("gateway4", "gateway6"):
        if key in entry:
            try:
                ipaddress.ip_address(str(entry[key]))
            except ValueError:
                return f"{name}: {key} {entry[key]!r} is not an address"
    return None


# ------------------------------------------------------------------ the seed ISO
def seed_iso(files: dict[str, str]) -> bytes:
    """An ISO 9660 image labelled ``cidata`` with Joliet and Rock Ridge names (cloud-init reads
    ``meta-data``, which plain ISO 9660 cannot spell)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    for index, (name, text) in enumerate(sorted(files.items())):
        data = text.encode()
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            f"/FILE{index};1",
            rr_name=name,
            joliet_path=f"/{name}",
        )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def build_seed(
    request: CloudInitRequest, *, instance_id: str, vm_name: str, macs: Sequence[str]
) -> Seed:
    hostname = request.hostname or vm_name
    validate_name(hostname, what="host name")
    meta = meta_data(instance_id, hostname)
    user = user_data(request, hostname)
    network = network_config(
        [mac.lower() for mac in macs], request.network_config_file, request.network_config_text
    )
    iso = seed_iso({"meta-data": meta, "user-data": user, "network-config": network})
    return Seed(meta_data=meta, user_data=user, network_config=network, iso=iso)
