"""Typed, declarative models of libvirt's XML documents (conversion only, no policy)."""

from kvmgr.xml.base import XMLObject, parse_xml
from kvmgr.xml.domain import Domain
from kvmgr.xml.network import Network
from kvmgr.xml.snapshot import Snapshot
from kvmgr.xml.storage import StoragePool, StorageVolume

__all__ = [
    "Domain",
    "Network",
    "Snapshot",
    "StoragePool",
    "StorageVolume",
    "XMLObject",
    "parse_xml",
]
