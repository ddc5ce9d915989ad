"""libvirt host interface XML (https://libvirt.org/formatnode.html#host-interfaces).

Read-only use: kvmgr asks the daemon which interfaces and addresses *it* sees (a daemon may run on
another host or in another network namespace than kvmgr).
"""

from __future__ import annotations

from kvmgr.xml.base import INT, XMLChildList, XMLObject, XMLProperty


class InterfaceIP(XMLObject):
    TAG = "ip"
    address = XMLProperty("./@address", str)
    prefix = XMLProperty("./@prefix", INT)


class InterfaceProtocol(XMLObject):
    TAG = "protocol"
    family = XMLProperty("./@family", str, doc="ipv4 or ipv6")
    ips = XMLChildList(InterfaceIP, "./ip")


class HostInterface(XMLObject):
    TAG = "interface"
    type = XMLProperty("./@type", str, doc="ethernet, bridge, bond, vlan")
    name = XMLProperty("./@name", str)
    mac = XMLProperty("./mac/@address", str)
    link_state = XMLProperty("./link/@state", str)
    protocols = XMLChildList(InterfaceProtocol, "./protocol")
