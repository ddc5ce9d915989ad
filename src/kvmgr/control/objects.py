"""Leases, owner records and groups of the objects that are not VMs: networks, pools, volumes,
ISOs and cloud images.

Lease keys, per host:

* ``net:<host>/<name>`` a network, ``pool:<host>/<name>`` a storage pool;
* ``vol:<host>/<pool>/<name>`` a volume.  An ISO of the library and a cloud image are volumes of
  their library pools, so ``iso delete`` and ``vol delete`` of the same file serialise, and so do
  an image's volume and its metadata (one key: the image's).

A pool's lease does not cover its volumes (two uploads into one pool run side by side); a forced
pool delete refuses volumes in use, and a volume being made under a lease is not yet in use.

Owner records: what the CLI makes is recorded like what the API makes, with the CLI's principal
(:func:`kvmgr.control.authz.cli_principal`, id 0): no owner id (the admins', whichever admin),
the creator ``cli:<unix user>``, and the group given at creation or later (pools, networks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmgr.control.keys import Key
from kvmgr.errors import InvalidInput
from kvmgr.names import validate_name

if TYPE_CHECKING:  # SQLAlchemy costs ~1 s of import: 'net list' and 'vol list' never pay it
    from kvmgr.store.db import Store
    from kvmgr.store.users import Principal

#: The cloud image library's pool (kvmgr.services.cloud_images.IMAGE_POOL, literal to import
#: lazily) and the ISO library's (kvmgr.services.isos.ISO_POOL).
IMAGE_POOL = "kvmgr-images"
ISO_POOL = "kvmgr-isos"
#: The kinds whose group may be set after creation.
GROUPED = ("network", "pool")


def net_key(host: str, name: str) -> Key:
    return Key(f"net:{host}/{name}", f"network {name}")


def pool_key(host: str, name: str) -> Key:
    return Key(f"pool:{host}/{name}", f"pool {name}")


def vol_key(host: str, pool: str, name: str) -> Key:
    return Key(f"vol:{host}/{pool}/{name}", f"volume {pool}/{name}")


def iso_key(host: str, name: str, pool: str = ISO_POOL) -> Key:
    return Key(vol_key(host, pool, name).key, f"ISO {name}")


def image_key(host: str, name: str) -> Key:
    return Key(vol_key(host, IMAGE_POOL, name).key, f"cloud image {name}")


def use_key(host: str, kind: str, names: tuple[str, ...]) -> Key:
    """The key of an object an operation uses (:meth:`kvmgr.services.steps.Steps.uses`)."""
    if kind == "network" and len(names) == 1:
        return net_key(host, names[0])
    if kind == "pool" and len(names) == 1:
        return pool_key(host, names[0])
    if kind == "volume" and len(names) == 2:
        return vol_key(host, names[0], names[1])
    raise ValueError(f"no lease key for {kind} {names}")  # a programming error


def check_group(group: str | None) -> str | None:
    """A group name as given (``None``: no group); bad names are refused."""
    if group is None:
        return None
    if group == "":
        raise InvalidInput("the group name is empty", hint="give a name, or --no-group")
    return validate_name(group, what="group name")


def set_group(
    store: Store, kind: str, key: str, group: str | None, who: Principal, *, host: str
) -> None:
    """Give network or pool ``key`` the group ``group`` (None: shared by every operator).

    The caller is an admin (the role guard and the CLI say so).  An object without a record (made
    outside kvmgr) gets one with no owner: the admins', as it was; the owner of a recorded one is
    kept.
    """
    if kind not in GROUPED:
        raise ValueError(f"groups are set on {GROUPED}, not {kind!r}")  # a programming error
    from kvmgr.store import ownership

    group = check_group(group)
    with store.session() as session:
        row = ownership.get(session, kind, key, host)
        if row is None:
            ownership.record(
                session, kind, key, None, group, host=host, label=key, creator=who.name
            )
        else:
            row.group = group


def group_of(store: Store, kind: str, key: str, *, host: str) -> str | None:
    from kvmgr.store import ownership

    with store.session() as session:
        row = ownership.get(session, kind, key, host)
        return None if row is None else row.group


__all__ = [
    "GROUPED",
    "check_group",
    "group_of",
    "image_key",
    "iso_key",
    "net_key",
    "pool_key",
    "set_group",
    "use_key",
    "vol_key",
]
