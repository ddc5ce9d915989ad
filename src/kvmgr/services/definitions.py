"""A VM's libvirt definition as text: show it, import one, replace it after an edit.

kvmgr hands libvirt the document the person wrote, byte for byte where it can (only a missing
UUID is filled in), so nothing kvmgr's model does not know about is ever lost.  Every document is
checked before libvirt sees it (well-formed, a ``<domain>``, a valid name) and then defined with
``VIR_DOMAIN_DEFINE_VALIDATE``, which checks it against libvirt's schema: an invalid document is
refused with libvirt's reason and nothing is defined or changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from kvmgr.connect import Connection
from kvmgr.errors import AlreadyExists, InvalidInput, libvirt_errors, translate
from kvmgr.names import validate_name
from kvmgr.services import vms
from kvmgr.xml.base import parse_xml
from kvmgr.xml.domain import Domain


@dataclass(frozen=True)
class DefineResult:
    name: str
    uuid: str
    changed: bool


def vm_xml(conn: Connection, name: str, *, inactive: bool = False) -> str:
    """The definition libvirt keeps for VM ``name``: the running one, or with ``inactive`` the
    one used at the next boot.  Secrets (VNC passwords) are left out, as virsh does."""
    dom = vms.lookup(conn, name)
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
    with libvirt_errors(f"reading the definition of VM {name}"):
        return str(dom.XMLDesc(flags))


def editable_xml(conn: Connection, name: str) -> str:
    """The persistent definition with secrets, the text ``kvmgr vm edit`` opens."""
    dom = vms.lookup(conn, name)
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    with libvirt_errors(f"reading the definition of VM {name}"):
        return str(dom.XMLDesc(flags))


def check_document(text: str | bytes) -> Domain:
    """Check what kvmgr can check itself: well-formed, a ``<domain>``, a valid name."""
    root = parse_xml(text, what="the VM definition")
    if root.tag != Domain.TAG:
        raise InvalidInput(
            f"the document is a <{root.tag}>, not a <domain>",
            hint="give a libvirt domain definition (https://libvirt.org/formatdomain.html)",
        )
    domain = Domain(root)
    if not domain.name:
        raise InvalidInput("the definition has no <name>", hint="add <name>NAME</name>")
    validate_name(domain.name, what="VM name")
    if not domain.element.get("type"):
        raise InvalidInput(
            "the <domain> element has no type attribute", hint="use <domain type='kvm'> or 'qemu'"
        )
    return domain


def define_vm(conn: Connection, text: str | bytes) -> DefineResult:
    """Import a definition for a new VM; refuse an invalid one (defining nothing) or a name
    already taken (``kvmgr vm edit`` changes an existing VM)."""
    domain = check_document(text)
    name = domain.name or ""
    if vms.exists(conn, name):
        raise AlreadyExists(
            f"a VM named {name!r} already exists",
            hint=f"change it with 'kvmgr vm edit {name}', or rename the VM in the file",
        )
    dom = _define_validated(conn, _as_text(text), name)
    with libvirt_errors(f"reading VM {name}"):
        return DefineResult(name=name, uuid=dom.UUIDString(), changed=True)


def replace_definition(conn: Connection, name: str, text: str | bytes) -> DefineResult:
    """Replace VM ``name``'s persistent definition with ``text`` (the result of an edit).

    Renaming and changing the UUID are refused: both would make libvirt define a different VM.
    On any refusal the old definition stays as it was.
    """
    dom = vms.lookup(conn, name)
    domain = check_document(text)
    with libvirt_errors(f"reading VM {name}"):
        uuid = str(dom.UUIDString())
    if domain.name != name:
        raise InvalidInput(
            f"renaming VM {name!r} to {domain.name!r} in its definition is not supported",
            hint=f"keep <name>{name}</name>: a new name would make libvirt define a second VM",
        )
    if domain.uuid is None:
        domain.uuid = uuid  # left out by the editor: keep the VM's own
        text = domain.to_xml()
    elif domain.uuid.lower().replace("-", "") != uuid.replace("-", ""):
        raise InvalidInput(
            f"the UUID of VM {name!r} cannot be changed (was {uuid}, edit has {domain.uuid})",
            hint=f"keep <uuid>{uuid}</uuid>",
        )
    before = vms.definition(dom, inactive=True).to_xml()
    _define_validated(conn, _as_text(text), name)
    after = vms.definition(dom, inactive=True).to_xml()
    return DefineResult(name=name, uuid=uuid, changed=before != after)


def _as_text(text: str | bytes) -> str:
    return text.decode() if isinstance(text, bytes) else text


def _define_validated(conn: Connection, text: str, name: str) -> libvirt.virDomain:
    try:
        return conn.virconn.defineXMLFlags(text, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_XML_INVALID_SCHEMA:
            detail = (err.get_error_message() or str(err)).strip()
            raise InvalidInput(
                f"the definition of VM {name!r} is not valid: {detail}",
                hint="fix the element named above (https://libvirt.org/formatdomain.html)",
            ) from err
        raise translate(err, f"defining VM {name}") from err
