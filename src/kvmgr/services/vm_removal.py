"""Deleting a VM with its own volumes, and the journal actions that remove or keep a VM.

A VM delete, once its checks pass, only rolls forward: one journal action (``vm.delete``) powers
the VM off, deletes the volumes kvmgr recorded as the VM's own, and undefines it last, so a
process killed half way (or a volume that cannot be deleted) never orphans a volume: the VM stays
defined, recording the volumes still to delete, until a delete (or recovery) finishes it.

The undo actions of operations that make VMs live here too: ``domain.undefine`` (a VM named by
the UUID the operation gave it, never by name) and ``vm.forget_volumes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import (
    InvalidState,
    KvmgrError,
    OperationFailed,
    libvirt_errors,
    translate,
)
from kvmgr.services.steps import Steps, owned_steps, recovery_action
from kvmgr.services.vms import (
    _refuse_if_others_need,
    by_uuid,
    definition,
    is_active_state,
    lookup,
    state_of,
    undefine,
)


def delete(
    conn: Connection,
    name: str,
    *,
    force: bool = False,
    keep_disks: bool = False,
    steps: Steps | None = None,
) -> list[str]:
    """Remove a VM; return the paths of the volumes deleted with it.

    Only volumes kvmgr recorded as created for this VM are deleted (never an ISO, a disk attached
    by hand, or a disk another VM still uses or is backed by).  A running VM needs ``force``.
    Callers serialise it with other work on the VM by holding its lease (kvmgr.control).

    Once the checks pass the delete only rolls forward (journal action ``vm.delete``): volumes
    first, the definition last, so a volume that cannot be deleted leaves the VM defined with
    that volume still recorded as its own (nothing orphaned; deleting again retries).
    """

    dom = lookup(conn, name)
    if is_active_state(state_of(dom)) and not force:
        raise InvalidState(
            f"VM {name!r} is running",
            hint=f"shut it down first, or use 'kvmgr vm delete {name} --force'",
        )
    meta = definition(dom, inactive=True).kvmgr_metadata()
    owned = [] if keep_disks or meta is None else list(meta.owned_volumes)
    _refuse_if_others_need(conn, name, owned)
    with libvirt_errors(f"reading VM {name}"):
        uuid = dom.UUIDString()
    with owned_steps(conn, steps) as journal:
        # volumes: for recovery's owner records (control/recovery_owners.py), not the action
        journal.finish_with("vm.delete", uuid=uuid, keep_disks=keep_disks, volumes=owned)
        return finish_delete(conn, uuid, keep_disks=keep_disks, say=journal.progress)


def finish_delete(
    conn: Connection,
    uuid: str,
    *,
    keep_disks: bool = False,
    say: Callable[[str], None] = lambda _message: None,
) -> list[str]:
    """Delete VM ``uuid``: power off, delete its own volumes, then undefine it (idempotent).

    Every volume is tried.  When one cannot be deleted (or something else started to use it),
    the VM stays defined and still records the volumes not deleted, and this raises.
    """
    dom = by_uuid(conn, uuid)
    if dom is None:
        return []
    name = dom.name()
    if is_active_state(state_of(dom)):
        say(f"powering off VM {name}")
        try:
            dom.destroy()
        except libvirt.libvirtError as err:
            if state_of(dom) != libvirt.VIR_DOMAIN_SHUTOFF:  # else it stopped meanwhile
                raise translate(err, f"powering off VM {name}") from err
    meta = definition(dom, inactive=True).kvmgr_metadata()
    owned = [] if keep_disks or meta is None else list(meta.owned_volumes)
    from kvmgr.services.storage import delete_volume_by_path

    deleted: list[str] = []
    problems: list[str] = []
    needed = _needed_by_others(conn, name, owned)
    for path in owned:
        if path in needed:
            problems.append(f"{path} is used by {', '.join(needed[path])}")
            continue
        say(f"deleting volume {path}")
        try:
            if delete_volume_by_path(conn, path):
                deleted.append(path)
        except KvmgrError as err:
            problems.append(str(err))
    if problems:
        record_owned_volumes(dom, remove=deleted)
        raise OperationFailed(
            f"VM {name!r} is kept, with the volumes not deleted: " + "; ".join(problems),
            hint=f"fix that, then delete again: 'kvmgr vm delete {name}'",
        )
    say(f"removing the definition of VM {name}")
    undefine(dom, keep_state=keep_disks)
    return deleted


def _needed_by_others(conn: Connection, name: str, paths: list[str]) -> dict[str, list[str]]:
    if not paths:
        return {}
    from kvmgr.services.storage import volume_users

    usage = volume_users(conn)
    going = {f"VM {name}"} | {f"volume {_pool_path_name(conn, path)}" for path in paths}
    needed = {}
    for path in paths:
        users = [user for user in usage.get(path, []) if user not in going]
        if users:
            needed[path] = users
    return needed


def _pool_path_name(conn: Connection, path: str) -> str:
    from kvmgr.services.storage import find_volume_by_path

    with libvirt_errors(f"reading volume {path}"):
        vol = find_volume_by_path(conn, path)
        if vol is None:
            return path
        return f"{vol.storagePoolLookupByVolume().name()}/{vol.name()}"


@recovery_action("vm.delete")
def _finish_delete_action(conn: Connection, args: dict[str, Any]) -> None:
    finish_delete(conn, str(args["uuid"]), keep_disks=bool(args.get("keep_disks")))


@recovery_action("domain.undefine")
def undo_define(conn: Connection, args: dict[str, Any]) -> None:
    """Undo defining VM ``uuid``: power it off and undefine it, if it exists and kvmgr made it."""
    dom = by_uuid(conn, str(args["uuid"]))
    if dom is None:
        return
    meta = definition(dom, inactive=True).kvmgr_metadata()
    if meta is None or not meta.created_by:
        raise InvalidState(
            f"VM {dom.name()!r} ({args['uuid']}) has no kvmgr record, so it is kept",
            hint="delete it by hand if it is not needed",
        )
    with libvirt_errors(f"powering off VM {dom.name()}"):
        if dom.isActive():
            dom.destroy()
    undefine(dom)


@recovery_action("domain.keep")
def keep_domain(_conn: Connection, _args: dict[str, Any]) -> None:
    """Past its point of no return an operation's VM is complete (a create whose VM started
    but whose wait for the guest was cut short): recovery keeps it as it is (and has nothing to
    do if someone deleted it since)."""


@recovery_action("vm.forget_volumes")
def forget_volumes(conn: Connection, args: dict[str, Any]) -> None:
    """Undo recording ``paths`` as VM ``uuid``'s own: drop those that no longer exist.

    A recorded path whose volume still exists stays recorded, so deleting the VM removes it.
    """
    dom = by_uuid(conn, str(args["uuid"]))
    if dom is None:
        return
    from kvmgr.services.storage import find_volume_by_path

    with libvirt_errors("looking up volumes"):
        gone = [p for p in args["paths"] if find_volume_by_path(conn, str(p)) is None]
    record_owned_volumes(dom, remove=gone)


def record_owned_volumes(
    dom: libvirt.virDomain, *, add: Sequence[str] = (), remove: Sequence[str] = ()
) -> list[str]:
    """Add/remove paths in kvmgr's record of the volumes it made for this VM; returns it.

    Written with setMetadata, which replaces kvmgr's element only (libvirt keeps every other
    ``<metadata>`` child), in the persistent definition and the running guest's.
    """
    import copy

    from lxml import etree

    from kvmgr.xml.domain import KVMGR_NS, KVMGR_PREFIX

    meta = definition(dom, inactive=True).kvmgr_metadata(create=True)
    assert meta is not None  # create=True always gives one
    owned = [path for path in meta.owned_volumes if path not in remove]
    owned += [path for path in add if path not in owned]
    if owned == meta.owned_volumes:
        return owned
    meta.owned_volumes = owned
    # setMetadata wants the element without a namespace and puts it in KVMGR_NS itself.
    element = copy.deepcopy(meta.element)
    for node in element.iter():
        node.tag = etree.QName(node).localname
    etree.cleanup_namespaces(element)
    with libvirt_errors(f"reading VM {dom.name()}"):
        flags = (libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0) | (
            libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0
        )
    with libvirt_errors(f"recording the volumes of VM {dom.name()}"):
        dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            etree.tostring(element, encoding="unicode"),
            KVMGR_PREFIX,
            KVMGR_NS,
            flags,
        )
    return owned
