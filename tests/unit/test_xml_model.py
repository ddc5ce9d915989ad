"""The declarative XML model: nothing lost on round trips, edits touch only what they change,
and every mapped field is exercised by the sample definitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from kvmgr.errors import InvalidInput
from kvmgr.xml import base as xmlbase
from kvmgr.xml.domain import (
    Disk,
    Domain,
    Interface,
    KvmgrMetadata,
)
from kvmgr.xml.network import Network
from kvmgr.xml.snapshot import Snapshot
from kvmgr.xml.storage import StoragePool, StorageVolume

SAMPLES = sorted((Path(__file__).parent.parent / "data" / "domains").glob("*.xml"))


def canonical(xml: str | bytes) -> bytes:
    """C14N form without insignificant whitespace, for exact comparison."""
    parser = etree.XMLParser(remove_blank_text=True)
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml, parser)
    return etree.tostring(root, method="c14n")


@pytest.fixture(params=SAMPLES, ids=[path.name for path in SAMPLES])
def sample(request: pytest.FixtureRequest) -> str:
    return Path(request.param).read_text()


def test_there_are_varied_samples() -> None:
    assert len(SAMPLES) >= 4


def test_round_trip_keeps_everything(sample: str) -> None:
    assert canonical(Domain.from_xml(sample).to_xml()) == canonical(sample)


def test_reading_every_field_changes_nothing(sample: str) -> None:
    domain = Domain.from_xml(sample)
    _read_all(domain)
    assert canonical(domain.to_xml()) == canonical(sample)


def test_edit_changes_only_what_it_touches(sample: str) -> None:
    domain = Domain.from_xml(sample)
    domain.vcpus = 8
    domain.memory_bytes = 3 * 1024**3
    disk = Disk()
    disk.type, disk.device, disk.source_file, disk.target_dev = "file", "disk", "/x.qcow2", "vdz"
    domain.devices.disks.append(disk)
    edited = etree.fromstring(domain.to_xml().encode(), etree.XMLParser(remove_blank_text=True))
    original = etree.fromstring(sample.encode(), etree.XMLParser(remove_blank_text=True))
    # Undo the three edits on the edited tree: what remains must equal the original exactly.
    edited.find("vcpu").text = original.find("vcpu").text
    edited.find("memory").text = original.find("memory").text
    edited.find("memory").set("unit", original.find("memory").get("unit"))
    new_disk = edited.find("devices").findall("disk")[-1]
    assert new_disk.find("target").get("dev") == "vdz"
    new_disk.getparent().remove(new_disk)
    assert etree.tostring(edited, method="c14n") == etree.tostring(original, method="c14n")


def test_new_disk_goes_after_the_last_disk() -> None:
    domain = Domain.from_xml((SAMPLES[0].parent / "virt-install-centos7.xml").read_text())
    disk = Disk()
    disk.target_dev = "vdb"
    domain.devices.disks.append(disk)
    tags = [child.tag for child in domain.devices.element]
    assert tags.index("controller") == tags.index("disk") + 3  # two old disks, then the new one


def test_memory_units_are_converted() -> None:
    domain = Domain.from_xml((SAMPLES[0].parent / "uefi-secureboot.xml").read_text())
    assert domain.memory_bytes == 4 * 1024**3
    assert domain.current_memory_bytes == 4096 * 1024**2
    domain.memory_bytes = 1024**3 + 1  # rounds up to whole KiB, never down
    assert domain.element.find("memory").text == str(1024**2 + 1)
    assert domain.element.find("memory").get("unit") == "KiB"


def test_names_are_escaped_not_interpolated() -> None:
    domain = Domain()
    domain.name = "evil</name><devices><disk/></devices><name>"
    reparsed = Domain.from_xml(domain.to_xml())
    assert reparsed.name == domain.name
    assert reparsed.element.find("devices") is None


def test_clearing_a_field_removes_only_what_it_created() -> None:
    nic = Interface()
    nic.model = "virtio"
    nic.mac = "52:54:00:00:00:09"
    nic.model = None
    assert canonical(nic.to_xml()) == canonical(
        '<interface><mac address="52:54:00:00:00:09"/></interface>'
    )


def test_kvmgr_metadata_keeps_other_applications_metadata() -> None:
    text = (SAMPLES[0].parent / "kvmgr-made.xml").read_text()
    domain = Domain.from_xml(text)
    meta = domain.kvmgr_metadata()
    assert meta is not None
    assert meta.owned_volumes == ["/var/lib/libvirt/images/web01.qcow2"]
    assert meta.linked_base == "golden"
    assert meta.template is False
    meta.owned_volumes = [*meta.owned_volumes, "/var/lib/libvirt/images/web01-1.qcow2"]
    again = Domain.from_xml(domain.to_xml())
    assert again.kvmgr_metadata().owned_volumes[-1].endswith("web01-1.qcow2")  # type: ignore[union-attr]
    assert b"kept by kvmgr" in etree.tostring(again.element)


def test_metadata_is_created_for_a_foreign_vm() -> None:
    domain = Domain.from_xml((SAMPLES[0].parent / "virt-install-centos7.xml").read_text())
    assert domain.kvmgr_metadata() is None
    meta = domain.kvmgr_metadata(create=True)
    assert meta is not None
    meta.os_id = "centos7.0"
    again = Domain.from_xml(domain.to_xml())
    assert again.kvmgr_metadata().os_id == "centos7.0"  # type: ignore[union-attr]
    assert "libosinfo" in again.to_xml()  # virt-install's own metadata survives


@pytest.mark.parametrize("text", ["<domain", "<domain><name>x</name></dom>", ""])
def test_bad_xml_is_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidInput, match="not well-formed"):
        Domain.from_xml(text)


def test_external_entities_are_never_expanded() -> None:
    text = '<!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/passwd">]><domain><name>&e;</name></domain>'
    try:
        domain = Domain.from_xml(text)
    except InvalidInput:
        return  # refusing the document is as good as not expanding it
    assert "root:" not in domain.to_xml()
    assert not (domain.name or "").startswith("root")


def test_wrong_root_is_refused() -> None:
    with pytest.raises(InvalidInput, match="expected a <domain>"):
        Domain.from_xml("<network><name>x</name></network>")


# ------------------------------------------------------------------------------ field coverage
def _all_classes() -> list[type[xmlbase.XMLObject]]:
    seen: list[type[xmlbase.XMLObject]] = []
    stack: list[type[xmlbase.XMLObject]] = [
        Domain,
        Network,
        StoragePool,
        StorageVolume,
        Snapshot,
        KvmgrMetadata,
    ]
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for field in cls.mapped_fields().values():
            if isinstance(field, xmlbase.XMLChild | xmlbase.XMLChildList):
                stack.append(field.cls)
    return seen


def _read_all(obj: xmlbase.XMLObject, found: set[tuple[str, str]] | None = None) -> None:
    for name, field in type(obj).mapped_fields().items():
        if isinstance(field, xmlbase.XMLChildList):
            for child in getattr(obj, name):
                _read_all(child, found)
        elif isinstance(field, xmlbase.XMLChild):
            if field.exists(obj):
                _read_all(getattr(obj, name), found)
        else:
            value = getattr(obj, name)
            present = value is True if isinstance(field, xmlbase.XMLFlag) else value is not None
            if found is not None and present:
                found.add((type(obj).__name__, name))


def _domain_classes() -> set[str]:
    names = set()
    stack: list[type[xmlbase.XMLObject]] = [Domain]
    while stack:
        cls = stack.pop()
        names.add(cls.__name__)
        for field in cls.mapped_fields().values():
            if (
                isinstance(field, xmlbase.XMLChild | xmlbase.XMLChildList)
                and field.cls.__name__ not in names
            ):
                stack.append(field.cls)
    return names


def test_every_mapped_domain_field_appears_in_a_sample() -> None:
    """Fails when a field is added to the domain model without a sample that exercises it."""
    found: set[tuple[str, str]] = set()
    for path in SAMPLES:
        _read_all(Domain.from_xml(path.read_text()), found)
    missing = []
    for cls in _all_classes():
        if cls.__name__ not in _domain_classes():
            continue
        for name, field in cls.mapped_fields().items():
            if (
                isinstance(field, xmlbase.XMLProperty | xmlbase.XMLFlag)
                and (cls.__name__, name) not in found
            ):
                # Serial/Console/Channel share CharDevice fields: one of them having it is enough.
                if cls.__name__ in ("Serial", "Console", "Channel", "CharDevice") and any(
                    (other, name) in found for other in ("Serial", "Console", "Channel")
                ):
                    continue
                missing.append(f"{cls.__name__}.{name}")
    assert not missing, f"mapped fields no sample exercises: {missing}"


def _value_for(field: xmlbase.XMLProperty[Any]) -> Any:
    if field.converter is xmlbase.INT:
        return 42
    if field.converter in (xmlbase.YES_NO, xmlbase.ON_OFF):
        return True
    return "value-1"


@pytest.mark.parametrize("cls", _all_classes(), ids=lambda cls: cls.__name__)
def test_every_mapped_field_writes_and_reads_back(cls: type[xmlbase.XMLObject]) -> None:
    for name, field in cls.mapped_fields().items():
        obj = cls()
        if isinstance(field, xmlbase.XMLProperty):
            value = _value_for(field)
            setattr(obj, name, value)
            again = cls(etree.fromstring(obj.to_xml().encode()))
            assert getattr(again, name) == value, f"{cls.__name__}.{name}"
            setattr(again, name, None)
            assert getattr(again, name) is None
        elif isinstance(field, xmlbase.XMLFlag):
            setattr(obj, name, True)
            assert getattr(cls(etree.fromstring(obj.to_xml().encode())), name) is True
            setattr(obj, name, False)
            assert getattr(obj, name) is False


LIBVIRT_SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")


@pytest.mark.skipif(not LIBVIRT_SCHEMA.exists(), reason="libvirt's schemas are not installed")
def test_samples_are_valid_libvirt_definitions(sample: str) -> None:
    """The samples are real definitions (libvirt's RelaxNG schema), not just well-formed XML."""
    schema = etree.RelaxNG(etree.parse(str(LIBVIRT_SCHEMA)))
    assert schema.validate(etree.fromstring(sample.encode())), schema.error_log.last_error
