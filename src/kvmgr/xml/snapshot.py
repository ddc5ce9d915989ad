"""libvirt domain snapshot XML (https://libvirt.org/formatsnapshot.html)."""

from __future__ import annotations

from kvmgr.xml.base import INT, XMLChild, XMLChildList, XMLObject, XMLProperty
from kvmgr.xml.domain import Domain


class SnapshotDisk(XMLObject):
    TAG = "disk"
    name = XMLProperty("./@name", doc="target dev (vda) or source path")
    snapshot = XMLProperty("./@snapshot", doc="internal, external, no, manual")
    type = XMLProperty("./@type")
    source_file = XMLProperty("./source/@file")
    driver_type = XMLProperty("./driver/@type")


class Snapshot(XMLObject):
    TAG = "domainsnapshot"
    name = XMLProperty("./name")
    description = XMLProperty("./description")
    state = XMLProperty("./state", doc="domain state when the snapshot was taken")
    creation_time = XMLProperty("./creationTime", INT)
    parent = XMLProperty("./parent/name")
    memory_snapshot = XMLProperty("./memory/@snapshot", doc="no, internal, external")
    memory_file = XMLProperty("./memory/@file")
    disks = XMLChildList(SnapshotDisk, "./disks/disk")
    domain = XMLChild(Domain, "./domain")
