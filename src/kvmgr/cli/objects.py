"""What the network, pool, volume, ISO and image commands share: the object's lease, a journaled
operation under it, and the owner record of what they make (kvmgr.control.objects).

Keys are given as functions of the host (``lambda host: net_key(host, name)``) because the host
is known only once the command has resolved ``--host``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from kvmgr.cli.common import state
from kvmgr.cli.output import console

if TYPE_CHECKING:
    from kvmgr.control.plane import Key
    from kvmgr.services.steps import Steps

KeyOf = Callable[[str], "Key"]
GroupOption = Annotated[
    str | None, typer.Option("--group", help="serve only this group's operators (and admins)")
]
NoGroupOption = Annotated[bool, typer.Option("--no-group", help="share it with every operator")]
#: How ``info`` shows an object no user owns: admins act on it, operators only use it (when
#: it is a shared pool or network).
ADMINS = "(admins)"


@contextmanager
def held(key: KeyOf, operation: str) -> Iterator[None]:
    """Hold the object's lease for ``operation`` (refused with Busy while another kvmgr process,
    here or elsewhere, works on it)."""
    plane = state.plane()
    with plane.lease(key(state.host_name()), operation):
        yield


@contextmanager
def journaled(kind: str, target: str, *keys: KeyOf, sole: bool = False) -> Iterator[Steps]:
    """A journaled operation under the leases of ``keys``: undone (a delete: finished) at once
    if it fails, and by the next kvmgr process if this one is killed.  ``sole`` (a delete):
    refused while another operation uses the object (a create on the network)."""
    plane = state.plane()
    host = state.host_name()
    with plane.operation(kind, target, host, keys=[key(host) for key in keys], sole=sole) as steps:
        yield steps


def busy(key: KeyOf) -> str | None:
    """``"<op> by <who> since <t>"`` while someone holds the object's lease."""
    return state.plane().busy(key(state.host_name()))


def record(
    kind: str, key: str, *, label: str = "", group: str | None = None, if_missing: bool = False
) -> None:
    """The owner record of an object this command made: the CLI's principal (no owner id: the
    admins'; creator ``cli:<unix user>``), see docs/SECURITY.md.  With ``if_missing`` a record
    already there is kept (a volume overwritten in place keeps its owner)."""
    from kvmgr.control.authz import cli_principal
    from kvmgr.control.ownership import owner_of, record_owner

    if if_missing and owner_of(state.store(), kind, key, host=state.host_name()) is not None:
        return
    record_owner(
        state.store(),
        kind,
        key,
        cli_principal(),
        host=state.host_name(),
        label=label or key,
        group=group,
    )


def record_vm(name: str) -> None:
    """The owner records of VM ``name`` this command made and of the volumes made for it."""
    from kvmgr.services import vms

    dom = vms.lookup(state.connection(), name)
    meta = vms.definition(dom, inactive=True).kvmgr_metadata()
    record("vm", str(dom.UUIDString()), label=name)
    for path in meta.owned_volumes if meta is not None else []:
        record("volume", path)


def forget(kind: str, *keys: str) -> None:
    """Drop the owner records of objects this command removed."""
    from kvmgr.control.ownership import forget_owner

    for key in keys:
        forget_owner(state.store(), kind, key, host=state.host_name())


def owner_fields(kind: str, key: str) -> dict[str, str | None]:
    """``owner`` (a user, or None: the admins'), ``group`` and ``creator`` for ``info``."""
    from kvmgr.control.ownership import owner_of

    found = owner_of(state.store(), kind, key, host=state.host_name())
    if found is None:  # made outside kvmgr (or before it recorded owners): the admins' too
        return {"owner": ADMINS, "group": None, "creator": None}
    return {
        "owner": found.owner or ADMINS,
        "group": found.group,
        "creator": found.creator or None,
    }


def change_group(
    kind: str,
    name: str,
    group: str | None,
    no_group: bool,
    *,
    key: KeyOf,
    exists: Callable[[], object],
) -> None:
    """``net set`` / ``pool set``: give the object ``group``, or none with ``no_group``, under its
    lease; ``exists`` raises NotFound for an object that is not there."""
    from kvmgr.control.authz import cli_principal
    from kvmgr.control.objects import set_group

    if (group is None) == (not no_group):
        raise typer.BadParameter("give --group NAME or --no-group")
    with held(key, "set group"):
        exists()
        set_group(state.store(), kind, name, group, cli_principal(), host=state.host_name())
    shown = f"group {group}" if group else "no group (shared)"
    console.print(f"{kind} {name}: {shown}", highlight=False)
