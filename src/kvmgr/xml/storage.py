"""libvirt storage pool and volume XML (https://libvirt.org/formatstorage.html)."""

from __future__ import annotations

from kvmgr.xml.base import INT, XMLObject, XMLProperty


class StoragePool(XMLObject):
    TAG = "pool"
    type = XMLProperty("./@type", str, doc="dir, fs, logical, netfs, ...")
    name = XMLProperty("./name", str)
    uuid = XMLProperty("./uuid", str)
    capacity = XMLProperty("./capacity", INT)
    allocation = XMLProperty("./allocation", INT)
    available = XMLProperty("./available", INT)
    target_path = XMLProperty("./target/path", str)
    target_mode = XMLProperty("./target/permissions/mode", str)
    source_dir = XMLProperty("./source/dir/@path", str)
    source_device = XMLProperty("./source/device/@path", str)
    source_host = XMLProperty("./source/host/@name", str)
    source_format = XMLProperty("./source/format/@type", str)


class StorageVolume(XMLObject):
    TAG = "volume"
    type = XMLProperty("./@type", str, doc="file, block, dir, ...")
    name = XMLProperty("./name", str)
    key = XMLProperty("./key", str)
    capacity = XMLProperty("./capacity", INT, doc="bytes when unit is absent or 'bytes'")
    capacity_unit = XMLProperty("./capacity/@unit", str)
    allocation = XMLProperty("./allocation", INT)
    allocation_unit = XMLProperty("./allocation/@unit", str)
    target_path = XMLProperty("./target/path", str)
    target_format = XMLProperty("./target/format/@type", str, doc="qcow2, raw, iso")
    target_mode = XMLProperty("./target/permissions/mode", str)
    backing_path = XMLProperty("./backingStore/path", str)
    backing_format = XMLProperty("./backingStore/format/@type", str)
    lazy_refcounts = XMLProperty("./target/features/lazy_refcounts", str)
    compat = XMLProperty("./target/compat", str, doc="qcow2 version: 0.10 (v2) or 1.1 (v3)")
