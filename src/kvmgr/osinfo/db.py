"""Reader for the osinfo-db XML database (the data behind libosinfo, virt-install, GNOME Boxes).

Where the files are, as libosinfo looks for them (later directories override earlier ones, file
by file and then OS by OS):

1. the system database: ``$OSINFO_SYSTEM_DIR`` or ``/usr/share/osinfo``
2. the local database: ``$OSINFO_LOCAL_DIR`` or ``/etc/osinfo``
3. the user database: ``$OSINFO_USER_DIR`` or ``~/.config/osinfo``

Parsing all ~800 OS files with lxml costs about 0.1-0.2 s, too much for every CLI start, so the
parsed index (plain data, no translations) is cached as JSON under ``/var/cache/kvmgr`` (root) or
``~/.cache/kvmgr``, keyed on the path, size and mtime of every XML file: a package upgrade or a
local override invalidates it.  In memory the index is loaded once per process.

Media matching follows libosinfo's ``osinfo_media_matches``:

* each of volume-id, system-id, publisher-id and application-id in the database is a regular
  expression (PCRE via GRegex), searched unanchored and case-sensitively in the ISO's field; a
  pattern that is absent matches anything, a pattern present against an empty ISO field fails;
* a database entry with none of the four and no volume-size matches nothing;
* volume-size, when given (> 0), must equal the ISO's volume size exactly;
* the ISO carries no architecture, so every media architecture matches.

Like libosinfo, OSes whose short ids are all ``*-unknown`` (e.g. ``fedora-unknown``, whose media
pattern matches every future Fedora) are only considered when no other OS matched.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

from kvmgr.osinfo.iso import IsoDescriptor

SYSTEM_DIR_ENV = "OSINFO_SYSTEM_DIR"
LOCAL_DIR_ENV = "OSINFO_LOCAL_DIR"
USER_DIR_ENV = "OSINFO_USER_DIR"
CACHE_DIR_ENV = "KVMGR_CACHE_DIR"
_DEFAULT_SYSTEM_DIR = "/usr/share/osinfo"
_DEFAULT_LOCAL_DIR = "/etc/osinfo"

# Bump when the cached index's shape changes.
_INDEX_FORMAT = 1

# Device ids of osinfo-db (PCI vendor/product; the q35 chipset is a pseudo device).
VIRTIO_BLOCK_IDS = ("http://pcisig.com/pci/1af4/1001", "http://pcisig.com/pci/1af4/1042")
VIRTIO_NET_IDS = ("http://pcisig.com/pci/1af4/1000", "http://pcisig.com/pci/1af4/1041")
VIRTIO1_IDS = ("http://pcisig.com/pci/1af4/1041", "http://pcisig.com/pci/1af4/1042")
Q35_ID = "http://qemu.org/chipset/x86/q35"

RESOURCE_LEVELS = ("minimum", "recommended", "maximum", "network-install")
RESOURCE_FIELDS = ("n-cpus", "cpu", "ram", "storage")
ISO_FIELDS = ("volume_id", "system_id", "publisher_id", "application_id")


# ----------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Media:
    """One ``<media>`` entry: what an installation ISO of the OS looks like."""

    arch: str
    volume_id: str | None = None
    system_id: str | None = None
    publisher_id: str | None = None
    application_id: str | None = None
    volume_size: int | None = None
    languages: tuple[str, ...] = ()
    language_regex: bool = False
    kernel: str | None = None
    initrd: str | None = None
    live: bool = False
    installer: bool = True
    installer_script: bool = True
    variants: tuple[str, ...] = ()
    url: str | None = None
    scripts: tuple[str, ...] = ()

    def specificity(self) -> int:
        """How much of the ISO this entry pins down (used to rank several matches)."""
        fields = sum(getattr(self, name) is not None for name in ISO_FIELDS)
        return fields + (10 if self.volume_size else 0)


@dataclass(frozen=True)
class Resources:
    """One ``<resources arch=...>`` block: levels -> field -> value (bytes, Hz or count)."""

    arch: str
    inherit: bool = False
    levels: dict[str, dict[str, int]] = field(default_factory=dict)

    def get(self, level: str, name: str) -> int | None:
        value = self.levels.get(level, {}).get(name)
        return value if value is not None and value > 0 else None


@dataclass(frozen=True)
class Firmware:
    arch: str
    type: str
    supported: bool = True


@dataclass(frozen=True)
class OsEntry:
    """One ``<os>`` with the facts kvmgr uses (names in the default language only)."""

    id: str
    short_ids: tuple[str, ...]
    name: str
    vendor: str | None = None
    family: str | None = None
    distro: str | None = None
    version: str | None = None
    codename: str | None = None
    release_status: str | None = None
    release_date: str | None = None
    eol_date: str | None = None
    derives_from: tuple[str, ...] = ()
    upgrades: tuple[str, ...] = ()
    clones: tuple[str, ...] = ()
    media: tuple[Media, ...] = ()
    resources: tuple[Resources, ...] = ()
    devices: dict[str, bool] = field(default_factory=dict)  # device id -> supported
    firmware: tuple[Firmware, ...] = ()
    scripts: tuple[str, ...] = ()
    kernel_url_argument: str | None = None

    @property
    def short_id(self) -> str:
        return self.short_ids[0] if self.short_ids else self.id

    @property
    def is_unknown_fallback(self) -> bool:
        """``fedora-unknown`` style entries: catch-alls for releases newer than the database."""
        return bool(self.short_ids) and all(s.endswith("-unknown") for s in self.short_ids)


@dataclass(frozen=True)
class MediaMatch:
    os: OsEntry
    media: Media


# ----------------------------------------------------------------------------------- XML parsing
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True)


def _default_text(node: etree._Element, tag: str) -> str | None:
    """Text of the first ``tag`` child without ``xml:lang`` (the untranslated value)."""
    for child in node.iterfind(tag):
        if child.get(_XML_LANG) is None:
            text = (child.text or "").strip()
            return text or None
    return None


def _bool_attr(node: etree._Element, name: str, default: bool) -> bool:
    value = node.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("true", "yes", "1")


def _int_text(node: etree._Element, tag: str) -> int | None:
    text = _default_text(node, tag)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None  # a malformed number in one entry should not lose the whole database


def _ids(node: etree._Element, tag: str) -> tuple[str, ...]:
    return tuple(child.get("id", "") for child in node.iterfind(tag) if child.get("id"))


def _parse_media(node: etree._Element) -> Media:
    iso = node.find("iso")
    values: dict[str, Any] = {}
    if iso is not None:
        for name in ISO_FIELDS:
            values[name] = _default_text(iso, name.replace("_", "-"))
        values["volume_size"] = _int_text(iso, "volume-size")
        languages = iso.findall("l10n-language")
        values["languages"] = tuple((lang.text or "").strip() for lang in languages)
        values["language_regex"] = any(_bool_attr(lang, "regex", False) for lang in languages)
    installer = node.find("installer")
    return Media(
        arch=node.get("arch", "all"),
        kernel=_default_text(node, "kernel"),
        initrd=_default_text(node, "initrd"),
        live=_bool_attr(node, "live", False),
        installer=_bool_attr(node, "installer", True),
        installer_script=_bool_attr(node, "installer-script", True),
        variants=_ids(node, "variant"),
        url=_default_text(node, "url"),
        scripts=_ids(installer, "script") if installer is not None else (),
        **values,
    )


def _parse_resources(node: etree._Element) -> Resources:
    levels: dict[str, dict[str, int]] = {}
    for level in RESOURCE_LEVELS:
        level_node = node.find(level)
        if level_node is None:
            continue
        numbers = {name: _int_text(level_node, name) for name in RESOURCE_FIELDS}
        levels[level] = {name: value for name, value in numbers.items() if value is not None}
    return Resources(
        arch=node.get("arch", "all"), inherit=_bool_attr(node, "inherit", False), levels=levels
    )


def _parse_os(node: etree._Element) -> OsEntry:
    devices: dict[str, bool] = {}
    for devices_node in node.iterfind("devices"):
        for device in devices_node.iterfind("device"):
            if device.get("id"):
                devices[device.get("id", "")] = _bool_attr(device, "supported", True)
    installer = node.find("installer")
    return OsEntry(
        id=node.get("id", ""),
        short_ids=tuple((s.text or "").strip() for s in node.iterfind("short-id") if s.text),
        name=_default_text(node, "name") or node.get("id") or "",
        vendor=_default_text(node, "vendor"),
        family=_default_text(node, "family"),
        distro=_default_text(node, "distro"),
        version=_default_text(node, "version"),
        codename=_default_text(node, "codename"),
        release_status=_default_text(node, "release-status"),
        release_date=_default_text(node, "release-date"),
        eol_date=_default_text(node, "eol-date"),
        derives_from=_ids(node, "derives-from"),
        upgrades=_ids(node, "upgrades"),
        clones=_ids(node, "clones"),
        media=tuple(_parse_media(media) for media in node.iterfind("media")),
        resources=tuple(_parse_resources(res) for res in node.iterfind("resources")),
        devices=devices,
        firmware=tuple(
            Firmware(fw.get("arch", "all"), fw.get("type", ""), _bool_attr(fw, "supported", True))
            for fw in node.iterfind("firmware")
        ),
        scripts=_ids(installer, "script") if installer is not None else (),
        kernel_url_argument=_default_text(node, "kernel-url-argument"),
    )


def parse_file(path: str | Path) -> list[OsEntry]:
    """Every ``<os>`` in one osinfo-db XML file (other entity kinds are skipped)."""
    try:
        root = etree.parse(os.fspath(path), _PARSER).getroot()
    except (etree.XMLSyntaxError, OSError):
        return []  # libosinfo skips unreadable files too; one bad file must not hide the rest
    return [_parse_os(node) for node in root.iterfind("os") if node.get("id")]


# ----------------------------------------------------------------------------------- JSON form
def _entry_to_json(entry: OsEntry) -> dict[str, Any]:
    return asdict(entry)


def _entry_from_json(data: dict[str, Any]) -> OsEntry:
    data = dict(data)
    data["media"] = tuple(Media(**_tuples(m)) for m in data["media"])
    data["resources"] = tuple(Resources(**r) for r in data["resources"])
    data["firmware"] = tuple(Firmware(**f) for f in data["firmware"])
    return OsEntry(**_tuples(data))


def _tuples(data: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples into lists; frozen records want them back as tuples."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}


# ----------------------------------------------------------------------------------- locations
def database_dirs() -> list[Path]:
    """The osinfo-db directories in override order (later wins), existing or not."""
    system = os.environ.get(SYSTEM_DIR_ENV) or _DEFAULT_SYSTEM_DIR
    local = os.environ.get(LOCAL_DIR_ENV) or _DEFAULT_LOCAL_DIR
    user = os.environ.get(USER_DIR_ENV) or str(Path.home() / ".config" / "osinfo")
    return [Path(system), Path(local), Path(user)]


def _os_files(dirs: Iterable[Path]) -> dict[str, Path]:
    """``os/`` XML files by path relative to their database; a later database's file wins."""
    files: dict[str, Path] = {}
    for base in dirs:
        os_dir = base / "os"
        if not os_dir.is_dir():
            continue
        for path in sorted(os_dir.rglob("*.xml")):
            files[str(path.relative_to(os_dir))] = path
    return files


def _fingerprint(files: dict[str, Path]) -> str:
    digest = hashlib.sha256(str(_INDEX_FORMAT).encode())
    for _rel, path in sorted(files.items()):
        try:
            stat = path.stat()
        except OSError:
            continue
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_path() -> Path:
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        base = Path(override)
    elif os.geteuid() == 0:
        base = Path("/var/cache/kvmgr")
    else:
        base = Path.home() / ".cache" / "kvmgr"
    return base / "osinfo-index.json"


# ----------------------------------------------------------------------------------- database
class OsinfoDb:
    """The OS entries of the osinfo database, by id and by short id, with media matching."""

    def __init__(self, entries: Iterable[OsEntry]) -> None:
        self._by_id: dict[str, OsEntry] = {}
        for entry in entries:
            self._by_id[entry.id] = entry  # a later definition overrides, as in libosinfo
        self._by_short_id: dict[str, OsEntry] = {}
        for entry in self._by_id.values():
            for short_id in entry.short_ids:
                self._by_short_id.setdefault(short_id, entry)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[OsEntry]:
        return iter(self._by_id.values())

    def get(self, ref: str) -> OsEntry | None:
        """An OS by short id (``rocky9``) or full id (``http://rockylinux.org/rocky/9``)."""
        return self._by_short_id.get(ref) or self._by_id.get(ref)

    def short_ids(self) -> list[str]:
        return sorted(self._by_short_id)

    # ------------------------------------------------------------------- relationships
    def related(self, entry: OsEntry) -> Iterator[OsEntry]:
        """``entry`` and every OS it derives from or clones, nearest first, each once.

        This is the set libosinfo walks for devices, resources and firmware
        (``osinfo_product_foreach_related`` with DERIVES_FROM | CLONES).
        """
        seen: set[str] = set()
        queue = [entry]
        while queue:
            current = queue.pop(0)
            if current.id in seen:
                continue
            seen.add(current.id)
            yield current
            for ref in (*current.derives_from, *current.clones):
                parent = self._by_id.get(ref)
                if parent is not None and parent.id not in seen:
                    queue.append(parent)

    def devices(self, entry: OsEntry) -> set[str]:
        """Device ids the OS supports, inherited; ``supported="false"`` anywhere removes one.

        That is ``osinfo_os_get_all_devices``: the union over related OSes, minus every device
        some link in the chain marks unsupported.
        """
        supported, unsupported = self._device_links(entry)
        return supported - unsupported

    def unsupported_devices(self, entry: OsEntry) -> set[str]:
        """Device ids some OS in the chain explicitly marks ``supported="false"``."""
        return self._device_links(entry)[1]

    def _device_links(self, entry: OsEntry) -> tuple[set[str], set[str]]:
        supported: set[str] = set()
        unsupported: set[str] = set()
        for os_entry in self.related(entry):
            for device, ok in os_entry.devices.items():
                (supported if ok else unsupported).add(device)
        return supported, unsupported

    def firmware_supported(self, entry: OsEntry, arch: str, kind: str) -> bool | None:
        """True/False where the OS (or its nearest related OS) says, None when nobody does."""
        for os_entry in self.related(entry):
            for firmware in os_entry.firmware:
                if firmware.type == kind and firmware.arch in (arch, "all"):
                    return firmware.supported
        return None

    def resource(self, entry: OsEntry, arch: str, level: str, name: str) -> int | None:
        """One resource value: the OS's own for ``arch``, then its ``all`` block, then the
        same search along the derives-from/clones chain (what ``inherit="true"`` asks for, and
        kvmgr's fallback for OSes that give no numbers of their own)."""
        for os_entry in self.related(entry):
            for wanted_arch in (arch, "all"):
                for block in os_entry.resources:
                    if block.arch == wanted_arch:
                        value = block.get(level, name)
                        if value is not None:
                            return value
        return None

    def scripts(self, entry: OsEntry) -> set[str]:
        """Install script ids of the OS and the OSes it derives from or clones."""
        found: set[str] = set()
        for os_entry in self.related(entry):
            found.update(os_entry.scripts)
            for media in os_entry.media:
                found.update(media.scripts)
        return found

    # ------------------------------------------------------------------- media matching
    def match_media(self, iso: IsoDescriptor) -> list[MediaMatch]:
        """Every OS with a media entry matching ``iso``, best first, one match per OS.

        Ranking: entries pinning more of the ISO (volume-size, more id fields) first; then the
        OS released first (an ISO id reused by a successor, e.g. Windows 10 and 11 sharing
        ``CCCOMA_X64FRE_``, goes to the release that introduced it); ``*-unknown`` catch-all
        OSes only when nothing else matched.
        """
        best: dict[str, MediaMatch] = {}
        for entry in self._by_id.values():
            for media in entry.media:
                if media_matches(iso, media):
                    current = best.get(entry.id)
                    if current is None or media.specificity() > current.media.specificity():
                        best[entry.id] = MediaMatch(entry, media)
        regular = [m for m in best.values() if not m.os.is_unknown_fallback]
        chosen = regular or list(best.values())
        return sorted(chosen, key=_rank)


def _rank(match: MediaMatch) -> tuple[int, str, str]:
    return (-match.media.specificity(), match.os.release_date or "9999", match.os.short_id)


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None  # a PCRE construct Python lacks: this entry cannot match, as a bad regex


def _field_matches(pattern: str | None, value: str) -> bool:
    if pattern is None:
        return True
    if not value.strip():
        return False  # libosinfo stores an all-blank ISO field as NULL, which no pattern matches
    compiled = _compile(pattern)
    return compiled is not None and compiled.search(value) is not None


def media_matches(iso: IsoDescriptor, media: Media) -> bool:
    """Does the ISO's descriptor match this database media entry (libosinfo's rules)?"""
    if all(getattr(media, name) is None for name in ISO_FIELDS) and not media.volume_size:
        return False
    if media.volume_size and media.volume_size > 0 and media.volume_size != iso.volume_size:
        return False
    return all(_field_matches(getattr(media, name), getattr(iso, name)) for name in ISO_FIELDS)


# ----------------------------------------------------------------------------------- loading
def _parse_all(files: dict[str, Path]) -> list[OsEntry]:
    entries: list[OsEntry] = []
    for path in files.values():
        entries.extend(parse_file(path))
    return entries


def _read_cache(path: Path, fingerprint: str) -> list[OsEntry] | None:
    try:
        data = json.loads(path.read_text())
        if data.get("fingerprint") != fingerprint:
            return None
        return [_entry_from_json(item) for item in data["entries"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, stale or from another kvmgr version: parse the XML again


def _write_cache(path: Path, fingerprint: str, entries: list[OsEntry]) -> None:
    payload = {"fingerprint": fingerprint, "entries": [_entry_to_json(e) for e in entries]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, separators=(",", ":")))
        tmp.replace(path)  # atomic: a concurrent reader sees the old or the new index, whole
    except OSError:
        pass  # a read-only cache directory only costs speed


def load_entries(dirs: Iterable[Path] | None = None, *, use_cache: bool = True) -> list[OsEntry]:
    """Parse (or load from the cache) every OS entry in ``dirs`` (default: libosinfo's)."""
    files = _os_files(database_dirs() if dirs is None else dirs)
    if not use_cache:
        return _parse_all(files)
    fingerprint = _fingerprint(files)
    path = cache_path()
    entries = _read_cache(path, fingerprint)
    if entries is None:
        entries = _parse_all(files)
        _write_cache(path, fingerprint, entries)
    return entries


_lock = threading.Lock()
_loaded: dict[tuple[str, ...], OsinfoDb] = {}


def get_db() -> OsinfoDb:
    """The database for the current ``OSINFO_*_DIR`` settings, loaded once per process."""
    from kvmgr.osinfo.supplement import supplement_entries

    dirs = database_dirs()
    key = tuple(str(d) for d in dirs)
    with _lock:
        db = _loaded.get(key)
        if db is None:
            # kvmgr's own entries for releases newer than the host's database come first, so
            # any real osinfo-db definition with the same id replaces them.
            db = OsinfoDb([*supplement_entries(), *load_entries(dirs)])
            _loaded[key] = db
        return db


def clear_memory_cache() -> None:
    """Forget loaded databases (tests that switch ``OSINFO_SYSTEM_DIR`` call this)."""
    with _lock:
        _loaded.clear()
