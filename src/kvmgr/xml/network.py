"""libvirt network XML (https://libvirt.org/formatnetwork.html) as typed objects."""

from __future__ import annotations

from kvmgr.xml.base import INT, XMLChild, XMLChildList, XMLFlag, XMLObject, XMLProperty


class DHCPRange(XMLObject):
    TAG = "range"
    start = XMLProperty("./@start", str)
    end = XMLProperty("./@end", str)


class DHCPHost(XMLObject):
    TAG = "host"
    mac = XMLProperty("./@mac", str)
    ip = XMLProperty("./@ip", str)
    name = XMLProperty("./@name", str)


class NetworkIP(XMLObject):
    TAG = "ip"
    family = XMLProperty("./@family", str)
    address = XMLProperty("./@address", str)
    netmask = XMLProperty("./@netmask", str)
    prefix = XMLProperty("./@prefix", INT)
    dhcp_ranges = XMLChildList(DHCPRange, "./dhcp/range")
    dhcp_hosts = XMLChildList(DHCPHost, "./dhcp/host")


class Network(XMLObject):
    TAG = "network"
    name = XMLProperty("./name", str)
    uuid = XMLProperty("./uuid", str)
    forward_mode = XMLProperty(
        "./forward/@mode", str, doc="nat, route, bridge, open; none = isolated"
    )
    forward_dev = XMLProperty("./forward/@dev", str)
    bridge_name = XMLProperty("./bridge/@name", str)
    bridge_stp = XMLProperty("./bridge/@stp", bool)
    bridge_delay = XMLProperty("./bridge/@delay", INT)
    mac = XMLProperty("./mac/@address", str)
    domain_name = XMLProperty("./domain/@name", str)
    domain_local_only = XMLProperty("./domain/@localOnly", bool)
    mtu = XMLProperty("./mtu/@size", INT)
    nat_port_start = XMLProperty("./forward/nat/port/@start", INT)
    nat_port_end = XMLProperty("./forward/nat/port/@end", INT)
    ipv6 = XMLProperty("./@ipv6", bool)
    dns_enable = XMLProperty("./dns/@enable", bool)
    ips = XMLChildList(NetworkIP, "./ip")
    has_forward = XMLFlag("./forward")

    @property
    def mode(self) -> str:
        """kvmgr's name for the network's kind: nat, routed, bridge, open or isolated."""
        if not self.has_forward:
            return "isolated"
        mode = self.forward_mode or "nat"
        return {"route": "routed"}.get(mode, mode)


__all__ = ["DHCPHost", "DHCPRange", "Network", "NetworkIP", "XMLChild"]
