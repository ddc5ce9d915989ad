"""The definitions ``vm create`` builds, per OS, compared with reviewed golden files.

Policy changes show up here as a diff to review.  Regenerate after an intended change with
``scripts/regen-golden`` and read the diff.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from kvmgr.connect import Connection, open_connection
from kvmgr.osinfo import generic_profile, get_profile
from kvmgr.services.create import DiskRequest, NicRequest, VMSpec, build_domain
from kvmgr.services.storage import VolumeRef
from kvmgr.units import GIB
from tests.golden import check_golden_text

GOLDEN = Path(__file__).parent.parent / "data" / "golden"
ISO = "/var/lib/kvmgr/isos/installer.iso"

CASES = {
    # name: (os short id, spec overrides)
    "centos7-defaults": ("centos7.0", {}),
    "win10-bridge": ("win10", {"nics": [NicRequest(kind="bridge", source="br0")]}),
    "winxp-legacy": ("winxp", {}),
    # TPM 2.0, Secure Boot through firmware auto-selection, SMM: what Windows 11's Setup checks
    "win11-secureboot": ("win11", {}),
    "generic-headless-two-disks": (
        "generic",
        {
            "graphics": "none",
            "disks": [DiskRequest(size=20 * GIB), DiskRequest(size=GIB, format="raw")],
        },
    ),
    "debian12-hotplug-ceilings": (
        "debian12",
        {"max_vcpus": 4, "max_memory": 4 * GIB, "nics": [NicRequest(mac="52:54:00:12:34:56")]},
    ),
}


@pytest.fixture
def conn() -> Iterator[Connection]:
    connection = open_connection("test:///default")
    yield connection
    connection.close()


@pytest.mark.parametrize("case", sorted(CASES))
def test_definition_matches_golden(conn: Connection, case: str) -> None:
    os_id, overrides = CASES[case]
    profile = generic_profile() if os_id == "generic" else get_profile(os_id)
    spec = VMSpec(name=case, iso=ISO, memory=profile.recommended_memory, vcpus=1)
    for key, value in overrides.items():
        setattr(spec, key, value)
    disks = [
        d if d.size or d.path else DiskRequest(size=profile.recommended_disk) for d in spec.disks
    ]
    volumes = [
        VolumeRef(
            "default", f"{case}-{i}", f"/var/lib/libvirt/images/{case}-{i}.{d.format}", d.format
        )
        for i, d in enumerate(disks)
    ]
    xml = build_domain(
        conn, spec, profile, "kvm", spec.memory or 0, 1, ISO, disks, volumes
    ).to_xml()
    check_golden_text(GOLDEN / f"{case}.xml", xml)  # a policy change: review the diff


LIBVIRT_SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")


@pytest.mark.skipif(not LIBVIRT_SCHEMA.exists(), reason="libvirt's schemas are not installed")
@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.xml")), ids=lambda path: path.stem)
def test_goldens_are_valid_for_libvirt(golden: Path) -> None:
    """Each definition passes libvirt's own RelaxNG schema (what virt-xml-validate checks)."""
    schema = etree.RelaxNG(etree.parse(str(LIBVIRT_SCHEMA)))
    assert schema.validate(etree.parse(str(golden))), schema.error_log.last_error
