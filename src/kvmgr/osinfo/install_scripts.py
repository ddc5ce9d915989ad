"""osinfo-db's install-script templates, applied the way libosinfo applies them.

Each ``<install-script>`` under /usr/share/osinfo/install-script carries an XSLT stylesheet.
libosinfo builds a small XML document describing the OS, the media, the script and the install
configuration (``<install-script-config>`` for the script itself, ``<command-line>`` for the
kernel arguments) and runs the stylesheet over it; here lxml's XSLT does the same, so kvmgr ships
no templates of its own for the OSes osinfo-db covers.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from kvmgr.errors import InvalidInput, NotFound
from kvmgr.osinfo.db import Media, OsEntry, OsinfoDb, database_dirs, get_db

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)
PROFILES = {"minimal": "jeos", "desktop": "desktop"}


@dataclass(frozen=True)
class InstallScript:
    """One osinfo-db install script (its metadata and its stylesheet)."""

    id: str
    profile: str  # "jeos" or "desktop"
    expected_filename: str
    injection_methods: tuple[str, ...]
    params: tuple[str, ...]
    required_params: tuple[str, ...]
    needs_internet: bool
    template: etree._Element  # the xsl:stylesheet

    @property
    def kind(self) -> str:
        """kickstart, preseed, autoyast, unattend, ... from the script id's path."""
        parts = self.id.rstrip("/").split("/")
        return parts[-2] if len(parts) >= 2 else "unknown"


def _text(node: etree._Element, tag: str) -> str:
    found = node.find(tag)
    return (found.text or "").strip() if found is not None else ""


def parse_script(node: etree._Element) -> InstallScript | None:
    template = node.find("template")
    stylesheet = template[0] if template is not None and len(template) else None
    if stylesheet is None:
        return None  # an external template file (not used by any script osinfo-db ships)
    params = node.findall("config/param")
    return InstallScript(
        id=node.get("id", ""),
        profile=_text(node, "profile"),
        expected_filename=_text(node, "expected-filename"),
        injection_methods=tuple((m.text or "").strip() for m in node.iterfind("injection-method")),
        params=tuple(param.get("name", "") for param in params),
        required_params=tuple(
            param.get("name", "") for param in params if param.get("policy") == "required"
        ),
        needs_internet=_text(node, "needs-internet") == "true",
        template=stylesheet,
    )


def script_dirs() -> list[Path]:
    return [directory / "install-script" for directory in database_dirs()]


@functools.cache
def all_scripts() -> dict[str, InstallScript]:
    """Every install script of the installed osinfo-db, by id."""
    found: dict[str, InstallScript] = {}
    for directory in script_dirs():
        for path in sorted(directory.glob("*/*.xml")):
            try:
                root = etree.parse(str(path), _PARSER).getroot()
            except (OSError, etree.XMLSyntaxError):
                continue  # one broken file must not hide every other script
            for node in root.iterfind("install-script"):
                script = parse_script(node)
                if script is not None:
                    found[script.id] = script
    return found


def scripts_for(os_entry: OsEntry, media: Media | None = None) -> list[InstallScript]:
    """The scripts libosinfo offers for ``os_entry`` installed from ``media``.

    A media entry that lists scripts of its own wins; one marked ``installer-script="false"``
    (Ubuntu's server ISOs, live images) gets none, whatever its OS says.
    """
    if media is not None and not media.installer_script:
        return []
    ids: Iterable[str] = media.scripts if media is not None and media.scripts else ()
    if not ids:
        ids = _own_scripts(get_db(), os_entry)
    known = all_scripts()
    return [known[script_id] for script_id in ids if script_id in known]


def _own_scripts(db: OsinfoDb, entry: OsEntry) -> list[str]:
    # The OS's own list, else the nearest OS it derives from or clones that has one, as
    # osinfo-db links scripts only at some releases and lets later ones inherit.
    for related in db.related(entry):
        scripts = list(related.scripts)
        for media in related.media:
            scripts += [s for s in media.scripts if s not in scripts]
        if scripts:
            return scripts
    return []


def choose_script(os_entry: OsEntry, media: Media | None, profile: str) -> InstallScript:
    wanted = PROFILES.get(profile)
    if wanted is None:
        raise InvalidInput(f"profile {profile!r} is not known", hint="use minimal or desktop")
    scripts = scripts_for(os_entry, media)
    if not scripts:
        raise NotFound(
            f"osinfo-db has no install script for {os_entry.name}",
            hint="give your own with --script FILE, or install without --unattended",
        )
    for script in scripts:
        if script.profile == wanted:
            return script
    offered = ", ".join(
        sorted({k for k, v in PROFILES.items() if v in {s.profile for s in scripts}})
    )
    raise InvalidInput(
        f"osinfo-db has no {profile} install script for {os_entry.name}",
        hint=f"use --profile {offered}",
    )


# ------------------------------------------------------------------ the configuration document
def _entity(parent: etree._Element, tag: str, values: Mapping[str, str | Iterable[str]]) -> None:
    node = etree.SubElement(parent, tag)
    for key, value in values.items():
        for item in [value] if isinstance(value, str) else value:
            etree.SubElement(node, key).text = item


def config_document(
    root_name: str,
    script: InstallScript,
    os_entry: OsEntry,
    media: Media | None,
    config: Mapping[str, str],
    *,
    injection: str,
) -> etree._Element:
    """What libosinfo's ``osinfo_install_script_generate_config_xml`` hands the stylesheet."""
    root = etree.Element(root_name)
    os_values: dict[str, str | Iterable[str]] = {
        "id": os_entry.id,
        "short-id": os_entry.short_id,
        "name": os_entry.name,
    }
    for key, value in (
        ("version", os_entry.version),
        ("distro", os_entry.distro),
        ("family", os_entry.family),
        ("vendor", os_entry.vendor),
        ("codename", os_entry.codename),
    ):
        if value:
            os_values[key] = value
    _entity(root, "os", os_values)
    if media is not None:
        media_values: dict[str, str | Iterable[str]] = {"variant": media.variants}
        for key, value in (
            ("url", media.url),
            ("volume-id", media.volume_id),
            ("kernel", media.kernel),
            ("initrd", media.initrd),
        ):
            if value:
                media_values[key] = value
        _entity(root, "media", media_values)
    _entity(
        root,
        "script",
        {
            "id": script.id,
            "profile": script.profile,
            "expected-filename": script.expected_filename,
            "preferred-injection-method": injection,
            "installation-source": "media",
        },
    )
    _entity(root, "config", dict(config))
    return root


@functools.cache
def _transform(script_id: str) -> etree.XSLT:
    return etree.XSLT(all_scripts()[script_id].template)


def _apply(script: InstallScript, document: etree._Element) -> str:
    try:
        transform = (
            _transform(script.id) if script.id in all_scripts() else etree.XSLT(script.template)
        )
        result = transform(document)
    except etree.XSLTError as err:
        raise InvalidInput(f"osinfo-db's install script {script.id} failed: {err}") from err
    return str(result)


def render(
    script: InstallScript,
    os_entry: OsEntry,
    media: Media | None,
    config: Mapping[str, str],
    *,
    injection: str = "initrd",
) -> str:
    """The install script text (kickstart, preseed, ...) for ``config``."""
    missing = [name for name in script.required_params if not config.get(name)]
    if missing:
        raise InvalidInput(
            f"{script.id} needs {', '.join(missing)}", hint="give the missing install settings"
        )
    document = config_document(
        "install-script-config", script, os_entry, media, config, injection=injection
    )
    return _apply(script, document)


def command_line(
    script: InstallScript,
    os_entry: OsEntry,
    media: Media | None,
    config: Mapping[str, str],
    *,
    injection: str = "initrd",
) -> str:
    """The kernel arguments the script's ``/command-line`` template gives ("" when none)."""
    document = config_document("command-line", script, os_entry, media, config, injection=injection)
    return " ".join(_apply(script, document).split())
