"""libvirt storage pool and volume XML (https://libvirt.org/formatstorage.html)."""

from __future__ import annotations

from kvmgr.xml.base import INT, XMLObject, XMLProperty


class StoragePool(XMLObject):
    TAG = "pool"
    type = XMLProperty("./@type", doc="dir, fs, logical, netfs, ...")
    name = XMLProperty("./name")
    uuid = XMLProperty("./uuid")
    capacity = XMLProperty("./capacity", INT)
    allocation = XMLProperty("./allocation", INT)
    available = XMLProperty("./available", INT)
    target_path = XMLProperty("./target/path")
    target_mode = XMLProperty("./target/permissions/mode")
    source_dir = XMLProperty("./source/dir/@path")
    source_device = XMLProperty("./source/device/@path")
    source_host = XMLProperty("./source/host/@name")
    source_format = XMLProperty("./source/format/@type")


class StorageVolume(XMLObject):
    TAG = "volume"
    type = XMLProperty("./@type", doc="file, block, dir, ...")
    name = XMLProperty("./name")
    key = XMLProperty("./key")
    capacity = XMLProperty("./capacity", INT, doc="bytes when unit is absent or 'bytes'")
    capacity_unit = XMLProperty("./capacity/@unit")
    allocation = XMLProperty("./allocation", INT)
    allocation_unit = XMLProperty("./allocation/@unit")
    target_path = XMLProperty("./target/path")
    target_format = XMLProperty("./target/format/@type", doc="qcow2, raw, iso")
    target_mode = XMLProperty("./target/permissions/mode")
    backing_path = XMLProperty("./backingStore/path")
    backing_format = XMLProperty("./backingStore/format/@type")
    lazy_refcounts = XMLProperty("./target/features/lazy_refcounts")
