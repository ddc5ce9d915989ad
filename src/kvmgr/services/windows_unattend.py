"""Windows unattended installs: ``autounattend.xml`` from osinfo-db's own template, on a small CD.

osinfo-db ships ``windows-unattend-jeos`` and ``-desktop`` (microsoft.com/windows/unattend/...)
for Vista/Server 2008 onwards; they are rendered with lxml's XSLT from the same configuration
document libosinfo builds (:mod:`kvmgr.osinfo.install_scripts`).  Their injection methods are
``cdrom`` and ``floppy``: Windows Setup looks for ``autounattend.xml`` at the root of every
removable drive (Microsoft's "implicit answer file search"), whatever the volume label, so kvmgr
puts it on a small ISO made here with pycdlib and attaches it as a second SATA CD-ROM.

What kvmgr changes in the rendered file, and why:

* Passwords: the templates write them with ``<PlainText>true</PlainText>``.  kvmgr writes the
  obscured form Windows System Image Manager writes instead (base64 of UTF-16LE of the password
  followed by the element name, ``Password`` or ``AdministratorPassword``) with PlainText false.
  That is an encoding Windows requires, not a hash: the file is as secret as the password, so
  the volume is mode 0600, removed with the install media, and never logged.
* Product key: optional here although the jeos template marks it required; without one the
  ``ProductKey`` elements are left out (Setup asks for a key unless the media is an evaluation
  or volume-licence image).
* Computer name and time zone: the jeos template has neither parameter; both are added to the
  specialize pass's Microsoft-Windows-Shell-Setup component (Windows names only: see
  :data:`WINDOWS_TIMEZONES`).
* Desktop profile: osinfo-db's ``windows.cmd`` (its post-install script) goes on the same CD,
  and the jeos template's closing ``shutdown /s`` is added so both profiles end the install
  the same way: by powering the VM off (see docs/ARCHITECTURE.md, "Windows installs").

There is no pykickstart for unattend files: the check here is that the result is well-formed
XML in the unattend namespace with the passes and settings an unattended install needs.
"""

from __future__ import annotations

import base64
import functools
import io
import re
from dataclasses import dataclass, field

from lxml import etree

from kvmgr.errors import InvalidInput, Unsupported
from kvmgr.osinfo.db import Media, OsEntry, database_dirs
from kvmgr.osinfo.install_scripts import InstallScript, all_scripts, choose_script, render

NS = "urn:schemas-microsoft-com:unattend"
_WCM = "http://schemas.microsoft.com/WMIConfig/2002/State"
CMD_SCRIPT_ID = "http://microsoft.com/windows/cmd/desktop"
UNATTEND_FILENAME = "autounattend.xml"
UNATTEND_LABEL = "UNATTEND"
_MARK_ADMIN = "KVMGR-ADMIN-PASSWORD-MARK"
_MARK_USER = "KVMGR-USER-PASSWORD-MARK"
_MARK_KEY = "KVMGR-PRODUCT-KEY-MARK"
# NetBIOS names: 15 characters; letters, digits and hyphens; not digits only.
_COMPUTER_RE = re.compile(r"[A-Za-z0-9-]{1,15}")
_PRODUCT_KEY_RE = re.compile(r"[A-Z0-9]{5}(-[A-Z0-9]{5}){4}")  # the template's $$$$$-... format
_WINDOWS_TZ_RE = re.compile(r"[A-Za-z][A-Za-z .()+-]* Standard Time|UTC|UTC[+-]\d\d")

#: IANA zone -> Windows time zone name (CLDR's windowsZones.xml, the zones people use most).
#: A Windows name (``W. Europe Standard Time``) is taken as it is.
WINDOWS_TIMEZONES = {
    "UTC": "UTC", "Etc/UTC": "UTC", "GMT": "GMT Standard Time",
    "Europe/London": "GMT Standard Time", "Europe/Dublin": "GMT Standard Time",
    "Europe/Lisbon": "GMT Standard Time",
    "Europe/Berlin": "W. Europe Standard Time", "Europe/Amsterdam": "W. Europe Standard Time",
    "Europe/Vienna": "W. Europe Standard Time", "Europe/Rome": "W. Europe Standard Time",
    "Europe/Zurich": "W. Europe Standard Time", "Europe/Stockholm": "W. Europe Standard Time",
    "Europe/Oslo": "W. Europe Standard Time",
    "Europe/Paris": "Romance Standard Time", "Europe/Brussels": "Romance Standard Time",
    "Europe/Madrid": "Romance Standard Time", "Europe/Copenhagen": "Romance Standard Time",
    "Europe/Prague": "Central Europe Standard Time",
    "Europe/Budapest": "Central Europe Standard Time",
    "Europe/Warsaw": "Central European Standard Time",
    "Europe/Athens": "GTB Standard Time", "Europe/Bucharest": "GTB Standard Time",
    "Europe/Helsinki": "FLE Standard Time", "Europe/Kyiv": "FLE Standard Time",
    "Europe/Kiev": "FLE Standard Time", "Europe/Moscow": "Russian Standard Time",
    "Europe/Istanbul": "Turkey Standard Time",
    "America/New_York": "Eastern Standard Time", "America/Toronto": "Eastern Standard Time",
    "America/Chicago": "Central Standard Time", "America/Denver": "Mountain Standard Time",
    "America/Phoenix": "US Mountain Standard Time",
    "America/Los_Angeles": "Pacific Standard Time", "America/Vancouver": "Pacific Standard Time",
    "America/Anchorage": "Alaskan Standard Time", "Pacific/Honolulu": "Hawaiian Standard Time",
    "America/Sao_Paulo": "E. South America Standard Time",
    "America/Mexico_City": "Central Standard Time (Mexico)",
    "America/Argentina/Buenos_Aires": "Argentina Standard Time",
    "Asia/Tokyo": "Tokyo Standard Time", "Asia/Seoul": "Korea Standard Time",
    "Asia/Shanghai": "China Standard Time", "Asia/Hong_Kong": "China Standard Time",
    "Asia/Singapore": "Singapore Standard Time", "Asia/Kolkata": "India Standard Time",
    "Asia/Dubai": "Arabian Standard Time", "Asia/Jerusalem": "Israel Standard Time",
    "Australia/Sydney": "AUS Eastern Standard Time",
    "Australia/Melbourne": "AUS Eastern Standard Time",
    "Australia/Brisbane": "E. Australia Standard Time",
    "Australia/Perth": "W. Australia Standard Time",
    "Pacific/Auckland": "New Zealand Standard Time",
    "Africa/Johannesburg": "South Africa Standard Time", "Africa/Cairo": "Egypt Standard Time",
}  # fmt: skip


@dataclass
class WindowsSettings:
    """What the Windows templates need, checked.  Passwords only in Windows' obscured form."""

    computer_name: str
    timezone: str  # a Windows time zone name
    language: str  # EN-US, from osinfo-db's l10n-language-reverse datamap
    user: str
    admin_obscured: str | None = field(default=None, repr=False)
    user_obscured: str | None = field(default=None, repr=False)
    product_key: str | None = field(default=None, repr=False)
    profile: str = "minimal"


@dataclass
class WindowsPlan:
    """The files of the unattend CD and where they came from."""

    files: dict[str, str]  # name on the CD -> text (autounattend.xml, windows.cmd)
    source: str  # "osinfo-db <script id>"
    script: InstallScript

    @property
    def text(self) -> str:
        return self.files[UNATTEND_FILENAME]


# ------------------------------------------------------------------ inputs
def obscure(password: str, element: str) -> str:
    """The form Windows SIM writes with PlainText false: base64(UTF-16LE(password + element))."""
    return base64.b64encode((password + element).encode("utf-16-le")).decode("ascii")


def computer_name(name: str) -> str:
    """A Windows computer name, or InvalidInput saying why not (NetBIOS: 15 characters)."""
    if len(name) > 15:
        raise InvalidInput(
            f"host name {name!r} is {len(name)} characters; Windows computer names are at "
            "most 15 (the NetBIOS limit)",
            hint="give a shorter one with --hostname",
        )
    if not _COMPUTER_RE.fullmatch(name) or name.isdigit():
        raise InvalidInput(
            f"host name {name!r} is not a Windows computer name",
            hint="letters, digits and hyphens, not digits only (use --hostname)",
        )
    return name


def windows_timezone(zone: str) -> str:
    """The Windows name of an IANA zone kvmgr maps, or a Windows name as given."""
    if zone in WINDOWS_TIMEZONES:
        return WINDOWS_TIMEZONES[zone]
    if _WINDOWS_TZ_RE.fullmatch(zone):
        return zone
    raise InvalidInput(
        f"time zone {zone!r} has no Windows name kvmgr knows",
        hint="give the Windows name, e.g. --timezone 'W. Europe Standard Time' (tzutil /l)",
    )


@functools.cache
def _language_map() -> dict[str, str]:
    # osinfo-db's own datamap, the one the templates' l10n-language parameter names.
    found: dict[str, str] = {}
    for directory in database_dirs():
        path = directory / "datamap" / "microsoft.com" / "win-8-l10n-language-reverse.xml"
        if path.is_file():
            root = etree.parse(str(path), etree.XMLParser(resolve_entities=False)).getroot()
            for entry in root.iter("entry"):
                found.setdefault(entry.get("inval", ""), entry.get("outval", ""))
    return found


def windows_language(locale: str) -> str:
    mapped = _language_map().get(locale)
    if not mapped:
        raise InvalidInput(
            f"locale {locale!r} is not one osinfo-db maps to a Windows language",
            hint="e.g. en_US, en_GB, de_DE, fr_FR",
        )
    return mapped


def product_key(key: str) -> str:
    key = key.strip().upper()
    if not _PRODUCT_KEY_RE.fullmatch(key):
        raise InvalidInput("the product key is not valid", hint="five groups: XXXXX-XXXXX-...")
    return key


# ------------------------------------------------------------------ rendering
def unattend_scripts(os_entry: OsEntry, media: Media | None) -> bool:
    """Does osinfo-db have an autounattend template for this Windows?"""
    from kvmgr.osinfo.install_scripts import scripts_for

    return any("/windows/unattend/" in s.id for s in scripts_for(os_entry, media))


def plan_windows(os_entry: OsEntry, media: Media | None, settings: WindowsSettings) -> WindowsPlan:
    """``autounattend.xml`` (and windows.cmd for desktop) for installing ``os_entry``."""
    script = choose_script(os_entry, media, settings.profile)
    if "/windows/unattend/" not in script.id:
        raise Unsupported(
            f"osinfo-db's script for {os_entry.name} is {script.id}, not an autounattend file",
            hint="Windows before Vista (winnt.sif on a floppy) is not supported: install by hand",
        )
    config = {
        "hardware-arch": "x86_64",
        "l10n-language": settings.language,
        "hostname": settings.computer_name,
        "user-login": settings.user,
        "user-realname": settings.user,
        # Markers only: replaced below by Windows' obscured form, never a password in clear.
        "admin-password": _MARK_ADMIN,
        "user-password": _MARK_USER,
        "reg-product-key": settings.product_key or _MARK_KEY,
    }
    rendered = render(script, os_entry, media, config, injection="cdrom")
    text = finish_unattend(rendered, settings)
    files = {UNATTEND_FILENAME: text}
    if script.profile == "desktop":
        cmd = all_scripts().get(CMD_SCRIPT_ID)
        if cmd is not None:
            files[cmd.expected_filename] = render(cmd, os_entry, media, config, injection="cdrom")
    return WindowsPlan(files=files, source=f"osinfo-db {script.id}", script=script)


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def _components(root: etree._Element, pass_name: str, name: str) -> list[etree._Element]:
    return [
        component
        for settings in root.iterfind(_q("settings"))
        if settings.get("pass") == pass_name
        for component in settings.iterfind(_q("component"))
        if component.get("name") == name
    ]


def finish_unattend(rendered: str, settings: WindowsSettings) -> str:
    """The template's output with obscured passwords, the key (or none), name and time zone."""
    root = etree.fromstring(rendered.encode(), etree.XMLParser(resolve_entities=False))
    _passwords(root, settings)
    if settings.product_key is None:
        _drop_product_key(root)
    specialize = _components(root, "specialize", "Microsoft-Windows-Shell-Setup")
    if not specialize:
        raise Unsupported("osinfo-db's unattend template has no specialize Shell-Setup component")
    named = [c for c in specialize if c.find(_q("ComputerName")) is not None]
    target = named[0] if named else specialize[0]
    if not named:
        etree.SubElement(target, _q("ComputerName")).text = settings.computer_name
    etree.SubElement(target, _q("TimeZone")).text = settings.timezone
    _closing_shutdown(root)
    etree.indent(root, space="  ")  # the added elements laid out like the template's own
    text = etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True).decode()
    if any(mark in text for mark in (_MARK_ADMIN, _MARK_USER, _MARK_KEY)):
        raise Unsupported(
            "osinfo-db's unattend template puts a secret where kvmgr cannot encode it",
            hint="install this Windows by hand",
        )
    check_unattend(text)
    return text


def _passwords(root: etree._Element, settings: WindowsSettings) -> None:
    # An absent password is the obscured empty password: Windows reads "no password" from it.
    admin = settings.admin_obscured or obscure("", "AdministratorPassword")
    user = settings.user_obscured or obscure("", "Password")
    for holder in root.iter(_q("AdministratorPassword"), _q("Password")):
        value = holder.find(_q("Value"))
        plain = holder.find(_q("PlainText"))
        if value is None:
            continue
        if _MARK_ADMIN in (value.text or ""):
            value.text = admin
        elif _MARK_USER in (value.text or ""):
            value.text = user
        if plain is None:
            plain = etree.SubElement(holder, _q("PlainText"))
        plain.text = "false"


def _drop_product_key(root: etree._Element) -> None:
    for node in list(root.iter()):
        if node.text and _MARK_KEY in node.text:
            # The element that carries the key (ProductKey, or the command running slmgr /ipk).
            gone = node
            while gone.tag not in (_q("ProductKey"), _q("SynchronousCommand")):
                parent = gone.getparent()
                if parent is None:
                    break
                gone = parent
            parent = gone.getparent()
            if parent is not None:
                parent.remove(gone)


def _closing_shutdown(root: etree._Element) -> None:
    """The jeos template's last first-logon command, powering off, also for desktop: the power
    off is how kvmgr knows Setup has finished."""
    for component in _components(root, "oobeSystem", "Microsoft-Windows-Shell-Setup"):
        commands = component.find(_q("FirstLogonCommands"))
        if commands is None:
            commands = etree.SubElement(component, _q("FirstLogonCommands"))
        lines = [(c.findtext(_q("CommandLine")) or "") for c in commands]
        if any("shutdown /s" in line.lower() for line in lines):
            return
        command = etree.SubElement(commands, _q("SynchronousCommand"))
        command.set(f"{{{_WCM}}}action", "add")
        etree.SubElement(command, _q("Order")).text = str(len(lines) + 1)
        etree.SubElement(command, _q("Description")).text = "Shutting down Windows"
        etree.SubElement(command, _q("CommandLine")).text = "cmd /C shutdown /s /t 0"
        return


def check_unattend(text: str) -> etree._Element:
    """Well-formed, in the unattend namespace, with what an unattended install needs."""
    try:
        root = etree.fromstring(text.encode(), etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError as err:
        raise InvalidInput(f"the unattend file is not well-formed XML: {err}") from err
    if root.tag != _q("unattend"):
        raise InvalidInput(f"the unattend file's root is {root.tag}, not {{{NS}}}unattend")
    passes = {settings.get("pass") for settings in root.iterfind(_q("settings"))}
    missing = {"windowsPE", "specialize", "oobeSystem"} - passes
    if missing:
        raise InvalidInput(f"the unattend file has no {', '.join(sorted(missing))} pass")
    wanted = {
        ("windowsPE", "Microsoft-Windows-Setup", "ImageInstall"),
        ("windowsPE", "Microsoft-Windows-Setup", "UserData"),
        ("windowsPE", "Microsoft-Windows-International-Core-WinPE", "UILanguage"),
        ("specialize", "Microsoft-Windows-Shell-Setup", "ComputerName"),
        ("oobeSystem", "Microsoft-Windows-Shell-Setup", "UserAccounts"),
    }
    for pass_name, component, child in wanted:
        if not any(c.find(_q(child)) is not None for c in _components(root, pass_name, component)):
            raise InvalidInput(f"the unattend file has no {pass_name}/{component}/{child}")
    if any((p.text or "").strip().lower() == "true" for p in root.iter(_q("PlainText"))):
        raise InvalidInput("the unattend file holds a password in plain text")
    return root


# ------------------------------------------------------------------ the CD
def unattend_iso(files: dict[str, str]) -> bytes:
    """An ISO 9660 image with Joliet names (Windows Setup reads those) holding ``files``."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, vol_ident=UNATTEND_LABEL)
    for name, text in sorted(files.items()):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/{name.upper()};1", joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def read_iso_file(image: bytes, name: str) -> bytes:
    """One file of an unattend ISO by its Joliet name (tests and checks read the CD back)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
        return out.getvalue()
    finally:
        iso.close()
