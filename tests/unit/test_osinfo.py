"""osinfo-db reader, ISO descriptor reader, media matching and OS profiles.

Detection tests run against the osinfo-db installed on the host (Debian's osinfo-db package),
with ISO images that carry the volume ids real vendor media carry.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pycdlib
import pytest
from lxml import etree

from kvmgr.errors import InvalidInput, NotFound
from kvmgr.osinfo import db as osdb
from kvmgr.osinfo import detect_iso, generic_profile, get_profile, read_descriptor
from kvmgr.osinfo.iso import IsoDescriptor
from kvmgr.units import GIB

SECTOR = 2048
HOST_DB = Path("/usr/share/osinfo/os")
pytestmark = pytest.mark.skipif(not HOST_DB.is_dir(), reason="osinfo-db is not installed")


# ----------------------------------------------------------------------------------- helpers
def make_iso(path: Path, volume_id: str, system_id: str = "", publisher: str = "") -> Path:
    """A real, small ISO 9660 image built by pycdlib."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=volume_id, sys_ident=system_id, pub_ident_str=publisher)
    payload = b"kvmgr test media\n" * 64
    iso.add_fp(io.BytesIO(payload), len(payload), "/README.TXT;1")
    iso.write(str(path))
    iso.close()
    return path


def _field(text: str, width: int) -> bytes:
    return text.encode("ascii").ljust(width, b" ")


def make_sparse_iso(path: Path, volume_id: str, volume_size: int, system_id: str = "") -> Path:
    """An image the size of a real DVD (sparse) with just a primary volume descriptor.

    Vendor media entries that pin the volume size (all CentOS 7 DVDs do) can only match an image
    of exactly that size; writing 4 GiB for real would make the test slow and disk hungry.
    """
    pvd = bytearray(SECTOR)
    pvd[0] = 1
    pvd[1:6] = b"CD001"
    pvd[6] = 1
    pvd[8:40] = _field(system_id, 32)
    pvd[40:72] = _field(volume_id, 32)
    blocks = volume_size // SECTOR
    pvd[80:88] = blocks.to_bytes(4, "little") + blocks.to_bytes(4, "big")
    pvd[128:132] = SECTOR.to_bytes(2, "little") + SECTOR.to_bytes(2, "big")
    pvd[318:446] = _field("", 128)
    pvd[574:702] = _field("", 128)
    terminator = bytearray(SECTOR)
    terminator[0] = 255
    terminator[1:6] = b"CD001"
    terminator[6] = 1
    with open(path, "wb") as out:
        out.seek(16 * SECTOR)
        out.write(pvd)
        out.write(terminator)
        out.truncate(volume_size)
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test builds its own index cache so tests cannot leak state through it."""
    monkeypatch.setenv(osdb.CACHE_DIR_ENV, str(tmp_path / "cache"))


# ----------------------------------------------------------------------------------- descriptor
def test_read_descriptor_reads_pvd_fields(tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "a.iso", "MY_VOLUME", "LINUX", "KVMGR PUBLISHER")
    desc = read_descriptor(iso)
    assert desc.volume_id == "MY_VOLUME"
    assert desc.system_id == "LINUX"
    assert desc.publisher_id == "KVMGR PUBLISHER"
    assert desc.application_id.startswith("PyCdlib")
    assert desc.volume_size == iso.stat().st_size  # pycdlib writes exactly the volume
    assert desc.bootable is False


def test_read_descriptor_refuses_non_iso(tmp_path: Path) -> None:
    junk = tmp_path / "junk.iso"
    junk.write_bytes(os.urandom(40 * SECTOR))
    with pytest.raises(InvalidInput, match="not an ISO image"):
        read_descriptor(junk)
    short = tmp_path / "short.iso"
    short.write_bytes(b"tiny")
    with pytest.raises(InvalidInput, match="not an ISO image"):
        read_descriptor(short)


def test_read_descriptor_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        read_descriptor(tmp_path / "nope.iso")


def test_sparse_4gib_detection_is_fast(tmp_path: Path) -> None:
    iso = make_sparse_iso(tmp_path / "big.iso", "CentOS 7 x86_64", 4148080640, "LINUX")
    detect_iso(iso)  # load the database first: we time the ISO part
    start = time.perf_counter()
    rounds = 50
    for _ in range(rounds):
        read_descriptor(iso)
    per_read = (time.perf_counter() - start) / rounds
    start = time.perf_counter()
    detection = detect_iso(iso)
    per_detect = time.perf_counter() - start
    print(
        f"PVD read of a 4 GiB image: {per_read * 1e6:.0f} us; detection: {per_detect * 1e3:.1f} ms"
    )
    assert detection.volume_size == 4148080640
    assert per_read < 0.05  # only a few KiB are read, whatever the image size
    assert per_detect < 0.5


# ----------------------------------------------------------------------------------- detection
# Volume ids as on the vendors' media, each matching the installed osinfo-db's patterns.
VENDOR_MEDIA = [
    ("Rocky-9-3-x86_64-dvd", "LINUX", "", "rocky9", "Rocky Linux 9"),
    ("AlmaLinux-9-3-x86_64-dvd", "LINUX", "", "almalinux9", "AlmaLinux 9"),
    ("Debian 12.2.0 amd64 n", "", "", "debian12", "Debian 12"),
    ("Ubuntu-Server 22.04.3 LTS amd64", "", "", "ubuntu22.04", "Ubuntu 22.04 LTS"),
    ("Fedora-S-dvd-x86_64-39", "LINUX", "", "fedora39", "Fedora Linux 39"),
    ("CCCOMA_X64FRE_EN-US_DV9", "", "MICROSOFT CORPORATION", "win10", "Microsoft Windows 10"),
]


@pytest.mark.parametrize(("volume_id", "system_id", "publisher", "short_id", "name"), VENDOR_MEDIA)
def test_vendor_media_detected(
    tmp_path: Path, volume_id: str, system_id: str, publisher: str, short_id: str, name: str
) -> None:
    detection = detect_iso(make_iso(tmp_path / "m.iso", volume_id, system_id, publisher))
    assert detection.matched
    assert detection.profile.short_id == short_id
    assert detection.profile.name == name
    assert detection.profile.arch == "x86_64"
    assert detection.candidates[0] == short_id
    assert detection.volume_id == volume_id


def test_centos7_dvd_matches_by_volume_size(tmp_path: Path) -> None:
    # Every CentOS 7 media entry pins the volume size; 4148080640 is the 1406 DVD.
    dvd = make_sparse_iso(tmp_path / "c7.iso", "CentOS 7 x86_64", 4148080640, "LINUX")
    detection = detect_iso(dvd)
    assert detection.matched
    assert detection.profile.short_id == "centos7.0"
    assert detection.profile.kickstart


def test_centos7_volume_id_with_unknown_size_is_not_centos(tmp_path: Path) -> None:
    odd = make_sparse_iso(tmp_path / "c7.iso", "CentOS 7 x86_64", 4148080640 + SECTOR, "LINUX")
    assert "centos7.0" not in detect_iso(odd).candidates


def test_windows_media_shared_by_10_and_11_lists_both(tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "w.iso", "CCCOMA_X64FRE_EN-US_DV9", "", "MICROSOFT CORPORATION")
    assert detect_iso(iso).candidates == ["win10", "win11"]


def test_windows_volume_id_without_publisher_does_not_match(tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "w.iso", "CCCOMA_X64FRE_EN-US_DV9", "", "SOMEONE ELSE")
    assert not detect_iso(iso).matched


def test_unknown_media_gets_generic_profile(tmp_path: Path) -> None:
    detection = detect_iso(make_iso(tmp_path / "u.iso", "KVMGR_TEST_DISC", "LINUX"))
    assert not detection.matched
    assert detection.candidates == []
    assert detection.profile == generic_profile()
    assert detection.profile.recommended_memory == 2 * GIB
    assert detection.profile.recommended_vcpus == 2
    assert detection.profile.recommended_disk == 20 * GIB
    assert detection.profile.virtio and detection.profile.q35


def test_matching_is_case_sensitive(tmp_path: Path) -> None:
    assert not detect_iso(make_iso(tmp_path / "r.iso", "ROCKY-9-3-X86_64-DVD", "LINUX")).matched


def test_unknown_catch_all_used_only_without_a_real_match(tmp_path: Path) -> None:
    # Fedora 45 is beyond every definition: only fedora-unknown's pattern matches it.
    detection = detect_iso(make_iso(tmp_path / "f.iso", "Fedora-S-dvd-x86_64-45", "LINUX"))
    assert detection.profile.short_id == "fedora-unknown"
    # Fedora 39 matches fedora-unknown's pattern as well, but the real entry wins alone.
    detection = detect_iso(make_iso(tmp_path / "g.iso", "Fedora-S-dvd-x86_64-39", "LINUX"))
    assert detection.candidates == ["fedora39"]


# ----------------------------------------------------------------------------------- matching
def _iso(**fields: object) -> IsoDescriptor:
    base: dict[str, object] = {
        "path": "x.iso",
        "volume_id": "Fedora 35",
        "system_id": "LINUX",
        "publisher_id": "Fedora",
        "application_id": "Fedora OS",
        "volume_size": 1234567,
        "bootable": True,
    }
    base.update(fields)
    return IsoDescriptor(**base)  # type: ignore[arg-type]


# The cases of libosinfo's own media matching test, plus the empty-entry rule.
@pytest.mark.parametrize(
    ("media", "expected"),
    [
        (osdb.Media(arch="x86_64", volume_id="Fedora 35"), True),  # optional fields absent
        (osdb.Media(arch="x86_64", volume_id="Fedora 34", system_id="LINUX"), False),
        (
            osdb.Media(
                arch="x86_64",
                volume_id="Fedora [0-9]+",
                system_id="LINUX",
                publisher_id="Fedora",
                application_id="Fedora OS",
            ),
            True,
        ),
        (osdb.Media(arch="x86_64", volume_id="Fedora 35", volume_size=1234567), True),
        (osdb.Media(arch="x86_64", volume_id="Fedora 35", volume_size=1234568), False),
        (osdb.Media(arch="x86_64", volume_id="dora 3"), True),  # unanchored search
        (osdb.Media(arch="x86_64", volume_id="^dora"), False),
        (osdb.Media(arch="x86_64"), False),  # an entry that pins nothing matches nothing
    ],
)
def test_media_matching_rules(media: osdb.Media, expected: bool) -> None:
    assert osdb.media_matches(_iso(), media) is expected


def test_pattern_against_blank_iso_field_fails() -> None:
    media = osdb.Media(arch="all", volume_id="Fedora", publisher_id=".*")
    assert not osdb.media_matches(_iso(publisher_id=""), media)


# ----------------------------------------------------------------------------------- profiles
def test_get_profile_real_entries() -> None:
    rocky = get_profile("rocky9")
    # rocky9 lists no devices itself: virtio and q35 come through clones -> rhel9.0.
    assert rocky.virtio and rocky.q35 and rocky.uefi and rocky.kickstart
    assert rocky.minimum_memory == 1536 * 1024**2
    debian = get_profile("debian12")
    assert debian.virtio and not debian.kickstart
    assert debian.family == "linux" and debian.distro == "debian"
    win = get_profile("win10")
    assert not win.virtio  # no in-box virtio drivers in the Windows installer
    assert win.family == "winnt"
    win11 = get_profile("win11")
    assert win11.uefi and win11.recommended_vcpus >= 2
    assert win11.minimum_memory == 4 * GIB
    assert not get_profile("win2k").q35


def test_get_profile_unknown_suggests_close_ids() -> None:
    with pytest.raises(NotFound) as err:
        get_profile("rocky-9")
    assert "rocky9" in (err.value.hint or "")


def test_generic_short_id() -> None:
    assert get_profile("generic", "aarch64") == generic_profile("aarch64")


def _os(root: etree._Element, os_id: str, short_id: str) -> etree._Element:
    node = etree.SubElement(root, "os", id=os_id)
    etree.SubElement(node, "short-id").text = short_id
    etree.SubElement(node, "name").text = short_id.upper()
    etree.SubElement(node, "family").text = "linux"
    return node


def _resources(node: etree._Element, arch: str, **levels: dict[str, int]) -> etree._Element:
    res = etree.SubElement(node, "resources", arch=arch)
    for level, values in levels.items():
        level_node = etree.SubElement(res, level)
        for name, value in values.items():
            etree.SubElement(level_node, name.replace("_", "-")).text = str(value)
    return res


def _write_db(base: Path) -> None:
    """A parent with everything, a child deriving from it with overrides, a clone of the child."""
    root = etree.Element("libosinfo", version="0.0.1")
    parent = _os(root, "http://example.org/p/1", "parent1")
    devices = etree.SubElement(parent, "devices")
    for dev in (*osdb.VIRTIO_BLOCK_IDS, *osdb.VIRTIO_NET_IDS, osdb.Q35_ID):
        etree.SubElement(devices, "device", id=dev)
    etree.SubElement(parent, "firmware", arch="x86_64", type="efi")
    _resources(parent, "all", minimum={"ram": GIB, "n_cpus": 1}, recommended={"ram": 3 * GIB})
    child = _os(root, "http://example.org/p/2", "child2")
    etree.SubElement(child, "derives-from", id="http://example.org/p/1")
    child_devices = etree.SubElement(child, "devices")
    etree.SubElement(child_devices, "device", id=osdb.Q35_ID, supported="false")
    _resources(child, "x86_64", recommended={"storage": 30 * GIB})
    clone = _os(root, "http://example.org/c/2", "clone2")
    etree.SubElement(clone, "clones", id="http://example.org/p/2")
    lonely = _os(root, "http://example.org/l/1", "lonely1")
    _resources(lonely, "all", minimum={"ram": 512 * 1024**2, "storage": 4 * GIB})
    target = base / "os" / "example.org"
    target.mkdir(parents=True)
    etree.ElementTree(root).write(str(target / "test.xml"), xml_declaration=True)


@pytest.fixture
def custom_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    base = tmp_path / "osinfo"
    _write_db(base)
    monkeypatch.setenv(osdb.SYSTEM_DIR_ENV, str(base))
    monkeypatch.setenv(osdb.LOCAL_DIR_ENV, str(tmp_path / "no-local"))
    monkeypatch.setenv(osdb.USER_DIR_ENV, str(tmp_path / "no-user"))
    osdb.clear_memory_cache()
    yield base
    osdb.clear_memory_cache()


def test_profile_inheritance_through_derives_from(custom_db: Path) -> None:
    child = get_profile("child2")
    assert child.virtio  # devices from the parent
    assert not child.q35  # ... minus the one the child marks unsupported
    assert child.uefi  # firmware from the parent
    assert child.recommended_memory == 3 * GIB  # parent's 'all' block
    assert child.minimum_memory == GIB
    assert child.recommended_disk == 30 * GIB  # the child's own x86_64 block wins
    assert child.recommended_vcpus == 2  # minimum 1 x 2: nobody recommends a number


def test_profile_inheritance_through_clones(custom_db: Path) -> None:
    clone = get_profile("clone2")
    assert clone.virtio and not clone.q35
    assert clone.recommended_disk == 30 * GIB


def test_profile_fallbacks_without_data(custom_db: Path) -> None:
    lonely = get_profile("lonely1")
    assert lonely.recommended_memory == GIB  # 2 x the 512 MiB minimum
    assert lonely.recommended_disk == 8 * GIB
    assert lonely.recommended_vcpus == 2  # generic
    assert not lonely.virtio and not lonely.q35 and not lonely.uefi


def test_later_database_overrides_earlier(
    custom_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "user-db"
    root = etree.Element("libosinfo", version="0.0.1")
    node = _os(root, "http://example.org/l/1", "lonely1")
    node.find("name").text = "Lonely Override"  # type: ignore[union-attr]
    target = user / "os" / "example.org"
    target.mkdir(parents=True)
    etree.ElementTree(root).write(str(target / "override.xml"))
    monkeypatch.setenv(osdb.USER_DIR_ENV, str(user))
    osdb.clear_memory_cache()
    assert get_profile("lonely1").name == "Lonely Override"


# ----------------------------------------------------------------------------------- index cache
def test_index_cache_round_trip_and_invalidation(custom_db: Path) -> None:
    parsed = osdb.load_entries(osdb.database_dirs(), use_cache=False)
    first = osdb.load_entries(osdb.database_dirs())  # parses and writes the cache
    assert osdb.cache_path().exists()
    cached = osdb.load_entries(osdb.database_dirs())  # from the cache
    assert cached == parsed == first
    xml = custom_db / "os" / "example.org" / "test.xml"
    xml.write_text(xml.read_text().replace("LONELY1", "LONELY-RENAMED"))
    os.utime(xml, ns=(time.time_ns(), time.time_ns() + 10**9))
    renamed = {e.short_id: e.name for e in osdb.load_entries(osdb.database_dirs())}
    assert renamed["lonely1"] == "LONELY-RENAMED"


def test_host_index_cache_gives_what_parsing_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is read instead of the XML (no timing here: speed lives in bench/)."""
    dirs = [Path("/usr/share/osinfo")]
    parsed = osdb.load_entries(dirs, use_cache=False)
    osdb.load_entries(dirs)  # writes the cache

    def no_parsing(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(osdb, "_write_cache", no_parsing)
    cached = osdb.load_entries(dirs)
    assert cached == parsed
