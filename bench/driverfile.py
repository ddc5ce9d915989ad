"""libvirt ``test:///`` driver files with N domains, for inventory benchmarks at scale.

The test driver reads a ``<node>`` document holding ``<domain>`` elements.  A domain starts
running unless it carries ``<test:runstate>5</test:runstate>`` (5 = shut off) in the test
driver's namespace.  Built with lxml, like every XML in this project.
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
SHUTOFF_RUNSTATE = 5  # VIR_DOMAIN_SHUTOFF
NAME_PREFIX = "t-bench-"


def domain_name(index: int) -> str:
    return f"{NAME_PREFIX}{index:05d}"


def is_running(index: int, running_every: int) -> bool:
    """Every ``running_every``-th domain runs (0 means none does)."""
    return running_every > 0 and index % running_every == 0


def _domain(index: int, running: bool) -> etree._Element:
    dom = etree.Element("domain", type="test")
    etree.SubElement(dom, "name").text = domain_name(index)
    etree.SubElement(dom, "memory", unit="KiB").text = "262144"
    etree.SubElement(dom, "currentMemory", unit="KiB").text = "262144"
    etree.SubElement(dom, "vcpu").text = "1"
    os_element = etree.SubElement(dom, "os")
    etree.SubElement(os_element, "type", arch="x86_64").text = "hvm"
    if not running:
        etree.SubElement(dom, f"{{{TEST_NS}}}runstate").text = str(SHUTOFF_RUNSTATE)
    return dom


def driver_xml(count: int, *, running_every: int = 4) -> bytes:
    """A ``<node>`` with ``count`` domains, every ``running_every``-th one running."""
    if count < 0:
        raise ValueError("count must not be negative")
    node = etree.Element("node", nsmap={"test": TEST_NS})
    for index in range(count):
        node.append(_domain(index, is_running(index, running_every)))
    return etree.tostring(node, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def write_driver_file(path: Path, count: int, *, running_every: int = 4) -> str:
    """Write the file and return the URI that opens it."""
    path.write_bytes(driver_xml(count, running_every=running_every))
    return f"test://{path.resolve()}"
