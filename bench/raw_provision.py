"""The provisioning baseline a person would write by hand: qemu-img for the disk, defineXML.

Run as a script, one process per VM, like the commands it is compared with::

    python bench/raw_provision.py URI NAME DISK_PATH DOMAIN_TYPE

Only libvirt-python, lxml and qemu-img: no kvmgr code, so its cost is the floor.
"""

from __future__ import annotations

import subprocess
import sys

import libvirt
from lxml import etree


def domain_xml(name: str, disk_path: str, domain_type: str) -> bytes:
    """A small q35 guest: 256 MiB, 1 vCPU, a virtio qcow2 disk, a NIC on 'default', serial."""
    dom = etree.Element("domain", type=domain_type)
    etree.SubElement(dom, "name").text = name
    etree.SubElement(dom, "memory", unit="MiB").text = "256"
    etree.SubElement(dom, "vcpu").text = "1"
    os_element = etree.SubElement(dom, "os")
    etree.SubElement(os_element, "type", arch="x86_64", machine="q35").text = "hvm"
    features = etree.SubElement(dom, "features")
    etree.SubElement(features, "acpi")
    etree.SubElement(features, "apic")
    devices = etree.SubElement(dom, "devices")
    disk = etree.SubElement(devices, "disk", type="file", device="disk")
    etree.SubElement(disk, "driver", name="qemu", type="qcow2")
    etree.SubElement(disk, "source", file=disk_path)
    etree.SubElement(disk, "target", dev="vda", bus="virtio")
    nic = etree.SubElement(devices, "interface", type="network")
    etree.SubElement(nic, "source", network="default")
    etree.SubElement(nic, "model", type="virtio")
    etree.SubElement(devices, "serial", type="pty")
    etree.SubElement(devices, "console", type="pty")
    return etree.tostring(dom)


def main(uri: str, name: str, disk_path: str, domain_type: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk_path, "1G"], check=True)
    conn = libvirt.open(uri)
    try:
        conn.defineXML(domain_xml(name, disk_path, domain_type).decode())
    finally:
        conn.close()


if __name__ == "__main__":
    main(*sys.argv[1:5])
