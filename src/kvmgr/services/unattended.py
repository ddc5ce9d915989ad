"""Unattended install scripts: what the installer of a detected OS reads, made and checked here.

The script text comes from osinfo-db's own templates (:mod:`kvmgr.osinfo.install_scripts`):
kickstart for the Red Hat family and Fedora, preseed for Debian and Ubuntu's old installer.
Ubuntu server releases, which osinfo-db marks ``installer-script="false"``, get an autoinstall
(subiquity) configuration from :func:`autoinstall_user_data`, delivered as a NoCloud seed.

Secrets never reach a template: the templates would write passwords in clear (``rootpw 'x'``,
``passwd/root-password password x``), so they are rendered with a marker in the password's place
and each line holding the marker is replaced by its hashed form (``rootpw --iscrypted $6$...``);
a marker left anywhere else refuses the script.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from kvmgr.crypt import sha512_crypt
from kvmgr.errors import InvalidInput, NotFound, Unsupported
from kvmgr.names import validate_name
from kvmgr.osinfo.db import Media, OsEntry
from kvmgr.osinfo.install_scripts import InstallScript, choose_script, command_line, render

_MARK_ROOT = "KVMGR-ROOT-PASSWORD-MARK"
_MARK_USER = "KVMGR-USER-PASSWORD-MARK"
_SSH_KEY_RE = re.compile(
    r"(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)"
    r"@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^'\"\\\n]*)?"
)
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PACKAGE_RE = re.compile(r"@?\^?[A-Za-z0-9][A-Za-z0-9._+:-]*")
_TIMEZONE_RE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,2}")
_WINDOWS_TZ_RE = re.compile(r"[A-Za-z][A-Za-z .()+-]* Standard Time")
_LOCALE_RE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
_MAX_SECRET_FILE = 4096
_MAX_SCRIPT = 1024 * 1024


@dataclass
class UnattendedRequest:
    """``vm create --unattended`` options; files are read (and checked) by :func:`load`."""

    user: str | None = None
    password_file: str | None = None
    root_password_file: str | None = None
    ssh_key_files: list[str] = field(default_factory=list)
    hostname: str | None = None
    timezone: str = "UTC"
    locale: str = "en_US"
    packages: list[str] = field(default_factory=list)
    profile: str = "minimal"
    script_file: str | None = None
    #: The API's way: values instead of files (hashed at once, never kept or logged).
    password: str | None = field(default=None, repr=False)
    root_password: str | None = field(default=None, repr=False)
    ssh_keys: list[str] = field(default_factory=list)
    #: Hashed already (the API hashes before it stores a task): used as they are.
    password_hash: str | None = field(default=None, repr=False)
    root_password_hash: str | None = field(default=None, repr=False)
    #: Windows only (osinfo-db's ``reg-product-key``); optional, never logged.
    product_key: str | None = field(default=None, repr=False)


@dataclass
class Settings:
    """A request with its files read: hashes, not passwords, from here on."""

    user: str | None
    user_hash: str | None
    root_hash: str | None
    ssh_keys: list[str]
    hostname: str
    timezone: str
    locale: str
    packages: list[str]
    profile: str
    script_text: str | None
    #: Windows needs the password itself, not a hash: kept only in the obscured form Windows
    #: reads (:func:`kvmgr.services.windows_unattend.obscure`), and only when given in clear.
    user_windows: str | None = field(default=None, repr=False)
    admin_windows: str | None = field(default=None, repr=False)
    product_key: str | None = field(default=None, repr=False)


@dataclass
class InstallPlan:
    """What the installer gets: a file, where it reads it from, and the kernel arguments."""

    kind: str  # kickstart, preseed, autoinstall
    filename: str  # the name the installer looks for (rhel.ks, preseed.cfg, user-data)
    text: str
    cmdline: str  # kernel arguments naming the script ("" for NoCloud autoinstall)
    injection: str  # initrd or cidata
    source: str  # "osinfo-db <script id>", "kvmgr autoinstall" or "user file <path>"
    release: str | None = None  # pykickstart's version name for kickstarts


# ------------------------------------------------------------------ named inputs
def read_secret_file(path: str, what: str) -> str:
    """The first line of a password file; refuses what cannot be a password file."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise NotFound(f"{what} {path!r}: {err.strerror}", hint="give an existing file") from err
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInput(f"{what} {path!r} is not a regular file")
    if info.st_size > _MAX_SECRET_FILE:
        raise InvalidInput(f"{what} {path!r} is too large to be a password file")
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"cannot read {what} {path!r}: {err}") from err
    if not secret:
        raise InvalidInput(f"{what} {path!r} is empty", hint="put the password on its first line")
    return secret


def read_ssh_keys(path: str) -> list[str]:
    """Public keys of an authorized_keys-style file; a private key or junk is refused."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(64 * 1024)
    except FileNotFoundError as err:
        raise NotFound(f"SSH key file {path!r} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"cannot read SSH key file {path!r}: {err}") from err
    if "PRIVATE KEY" in text:
        raise InvalidInput(f"{path!r} is a private key", hint="give the public key (the .pub file)")
    keys = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not _SSH_KEY_RE.fullmatch(line):
            raise InvalidInput(
                f"{path}:{number} is not an OpenSSH public key",
                hint="lines look like 'ssh-ed25519 AAAA... comment' (no quotes or backslashes)",
            )
        keys.append(line)
    if not keys:
        raise InvalidInput(f"SSH key file {path!r} holds no key")
    return keys


def check_ssh_key(key: str) -> str:
    """One OpenSSH public key line, as given to the API."""
    key = key.strip()
    if "PRIVATE KEY" in key:
        raise InvalidInput("that is a private key", hint="give the public key (the .pub file)")
    if not _SSH_KEY_RE.fullmatch(key):
        raise InvalidInput(
            "not an OpenSSH public key", hint="keys look like 'ssh-ed25519 AAAA... comment'"
        )
    return key


def _check(pattern: re.Pattern[str], value: str, what: str, hint: str) -> str:
    if not pattern.fullmatch(value):
        raise InvalidInput(f"{what} {value!r} is not valid", hint=hint)
    return value


def load(request: UnattendedRequest, vm_name: str) -> Settings:
    """Check every option and read every named file, before anything is made."""
    user = request.user
    if user is not None:
        _check(_USER_RE, user, "user name", "lower case letters, digits, _ and -")
        if user == "root":
            raise InvalidInput("--user root is not a new user", hint="use --root-password-file")
    if request.password_file and not user:
        raise InvalidInput("--password-file needs --user", hint="name the user with --user")
    hostname = request.hostname or vm_name
    _check(_HOSTNAME_RE, hostname, "host name", "letters, digits and - (use --hostname)")
    if not _WINDOWS_TZ_RE.fullmatch(request.timezone):  # Windows names have spaces
        _check(_TIMEZONE_RE, request.timezone, "time zone", "e.g. UTC or Europe/Berlin")
    _check(_LOCALE_RE, request.locale, "locale", "e.g. en_US or de_DE")
    for package in request.packages:
        _check(_PACKAGE_RE, package, "package", "package or @group names, comma-separated")
    if request.profile not in ("minimal", "desktop"):
        raise InvalidInput(f"--profile {request.profile!r} is not known", hint="minimal, desktop")
    keys = [key for path in request.ssh_key_files for key in read_ssh_keys(path)]
    keys += [check_ssh_key(key) for key in request.ssh_keys]
    script_text = None
    if request.script_file:
        script_text = _read_script(request.script_file)
    root = (
        read_secret_file(request.root_password_file, "root password file")
        if request.root_password_file
        else request.root_password
    )
    password = (
        read_secret_file(request.password_file, "password file")
        if request.password_file
        else request.password
    )
    if password and not user:
        raise InvalidInput("a password needs a user", hint="name the user")
    if request.password_hash and not user:
        raise InvalidInput("a password needs a user", hint="name the user")
    from kvmgr.services.windows_unattend import obscure, product_key

    return Settings(
        user=user,
        user_hash=sha512_crypt(password) if password else request.password_hash,
        root_hash=sha512_crypt(root) if root else request.root_password_hash,
        ssh_keys=keys,
        hostname=hostname,
        timezone=request.timezone,
        locale=request.locale,
        packages=list(request.packages),
        profile=request.profile,
        script_text=script_text,
        user_windows=obscure(password, "Password") if password else None,
        admin_windows=obscure(root, "AdministratorPassword") if root else None,
        product_key=product_key(request.product_key) if request.product_key else None,
    )


def _read_script(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise NotFound(f"install script {path!r} does not exist", hint="give an existing file")
    if file.stat().st_size > _MAX_SCRIPT:
        raise InvalidInput(f"install script {path!r} is larger than 1 MiB")
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"cannot read install script {path!r}: {err}") from err


# ------------------------------------------------------------------ planning
def is_ubuntu_server(os_entry: OsEntry, media: Media | None) -> bool:
    """Ubuntu 20.04+ server media: subiquity, which osinfo-db has no script for."""
    if os_entry.distro != "ubuntu" or media is None or media.installer_script:
        return False
    try:
        return int((os_entry.version or "0").split(".")[0]) >= 20
    except ValueError:
        return False


def plan(
    os_entry: OsEntry, media: Media | None, settings: Settings, *, volume_id: str = ""
) -> InstallPlan:
    """The script, its delivery and kernel arguments for installing ``os_entry``."""
    if is_ubuntu_server(os_entry, media):
        return _autoinstall_plan(settings)
    if os_entry.family == "winnt":
        raise Unsupported(
            f"{os_entry.name} installs from an autounattend CD, not a kernel and initrd",
            hint="kvmgr.services.windows_install makes it (vm create --unattended does)",
        )
    if " " in settings.timezone:
        raise InvalidInput(
            f"time zone {settings.timezone!r} is a Windows name", hint="e.g. Europe/Berlin"
        )
    script = choose_script(os_entry, media, settings.profile)
    if script.kind not in ("kickstart", "preseed"):
        raise Unsupported(
            f"osinfo-db's {script.kind} scripts ({script.id}) are not supported yet",
            hint="use --script FILE with delivery your installer accepts, or install by hand",
        )
    config = _osinfo_config(settings, script)
    args = command_line(script, os_entry, media, config, injection="initrd")
    if script.kind == "kickstart" and volume_id:
        # What the media's own boot menu passes: anaconda finds its stage2 on the CD by label.
        args += f" inst.stage2=hd:LABEL={_label(volume_id)}"
    release = ""
    if script.kind == "kickstart":
        from kvmgr.services.kickstart import pykickstart_version, validate_kickstart

        release = pykickstart_version(os_entry)
    if settings.script_text is not None:
        text, source = settings.script_text, "user file"
    else:
        rendered = render(script, os_entry, media, config, injection="initrd")
        text = _hash_secrets(script.kind, rendered, settings, release)
        source = f"osinfo-db {script.id}"
    result = InstallPlan(
        kind=script.kind,
        filename=script.expected_filename,
        text=text,
        cmdline=f"{args} console=ttyS0,115200".strip(),
        injection="initrd",
        source=source,
    )
    if script.kind == "kickstart":
        result.release = release
        validate_kickstart(text, release, what=source)
    return result


def _label(volume_id: str) -> str:
    # anaconda's hd:LABEL= takes udev's escaping: a space is \x20
    return "".join(c if c.isalnum() or c in "-_." else f"\\x{ord(c):02x}" for c in volume_id)


def _osinfo_config(settings: Settings, script: InstallScript) -> dict[str, str]:
    config = {
        "hardware-arch": "x86_64",
        "l10n-keyboard": "us",
        "l10n-language": settings.locale,
        "l10n-timezone": settings.timezone,
        "hostname": settings.hostname,
        # Always a marker, never a password: replaced below by the hash, or a locked account.
        "admin-password": _MARK_ROOT,
    }
    if script.kind == "kickstart" and "user-login" in script.required_params:
        if not settings.user:
            raise InvalidInput(
                f"the {settings.profile} profile needs a user", hint="add --user NAME"
            )
        config["user-login"] = settings.user
        config["user-password"] = _MARK_USER
    if script.kind == "preseed" and settings.user and settings.user_hash:
        config["user-login"] = settings.user
        config["user-password"] = _MARK_USER
        config["user-realname"] = settings.user
    return config


def _hash_secrets(kind: str, text: str, settings: Settings, release: str) -> str:
    if kind == "kickstart":
        text = _kickstart_secrets(text, settings, release)
    else:
        text = _preseed(text, settings)
    if _MARK_ROOT in text or _MARK_USER in text:
        raise Unsupported(
            "osinfo-db's template puts the password where kvmgr cannot hash it",
            hint="give your own script with --script FILE (with hashed passwords)",
        )
    return text


def _kickstart_secrets(text: str, settings: Settings, release: str) -> str:
    hashes = {
        _MARK_ROOT: ("root", settings.root_hash),
        _MARK_USER: (settings.user, settings.user_hash),
    }
    lines = [_kickstart_line(line, hashes) for line in text.splitlines()]
    template_adds_user = _MARK_USER in text
    extra: list[str] = []
    if settings.user and not template_adds_user:
        user = f"user --name={settings.user} --groups=wheel"
        if settings.user_hash:
            user += f" --iscrypted --password={settings.user_hash}"
        extra.append(user)
    if _has_command(release, "sshkey"):
        for key in settings.ssh_keys:
            extra.append(f'sshkey --username={settings.user or "root"} "{key}"')
    # Commands go before the first %section; packages go into %packages.
    first_section = next(
        (index for index, line in enumerate(lines) if line.startswith("%")), len(lines)
    )
    lines[first_section:first_section] = extra
    if settings.packages:
        index = lines.index("%packages") + 1 if "%packages" in lines else None
        if index is None:
            raise Unsupported("the kickstart template has no %packages section")
        lines[index:index] = settings.packages
    if settings.ssh_keys and not _has_command(release, "sshkey"):
        # Releases before sshkey (RHEL 6 and 7): the same file, written after the install.
        home = f"/home/{settings.user}" if settings.user else "/root"
        owner = settings.user or "root"
        lines += [
            "%post",
            f"mkdir -p -m 700 {home}/.ssh",
            f"cat >> {home}/.ssh/authorized_keys <<'KVMGR_KEYS'",
        ]
        lines += [*settings.ssh_keys, "KVMGR_KEYS"]
        lines += [f"chmod 600 {home}/.ssh/authorized_keys", f"chown -R {owner}: {home}/.ssh"]
        lines += ["restorecon -R {home}/.ssh || true".replace("{home}", home), "%end"]
    return "\n".join(lines) + "\n"


def _kickstart_line(line: str, hashes: dict[str, tuple[str | None, str | None]]) -> str:
    """One template line with a password marker, in its hashed (or locked) form."""
    for mark, (name, hashed) in hashes.items():
        if mark not in line:
            continue
        if line.startswith("rootpw"):
            return f"rootpw --iscrypted {hashed}" if hashed else "rootpw --lock"
        if "passwd --stdin" in line:  # the desktop templates set passwords in %post
            return f"echo '{name}:{hashed}' | chpasswd -e" if hashed else f"passwd -l {name}"
        if f"test -z '{mark}'" in line:  # "no password: make the account passwordless"
            return line.replace(f"'{mark}'", "'hashed'" if hashed else "'locked'")
    return line


def _has_command(release: str, command: str) -> bool:
    from kvmgr.services.kickstart import has_command

    return has_command(release, command)


def _preseed_line(line: str, settings: Settings) -> str | None:
    """One template line in its hashed form; None drops it."""
    if _MARK_ROOT in line:
        if "root-password-again" in line:
            return None
        if settings.root_hash:
            return f"d-i passwd/root-password-crypted password {settings.root_hash}"
        return "d-i passwd/root-login boolean false"
    if _MARK_USER in line:
        if "user-password-again" in line:
            return None
        return f"d-i passwd/user-password-crypted password {settings.user_hash}"
    if line.startswith("d-i passwd/root-login") and not settings.root_hash:
        return None  # replaced by root-login false where the password was
    if line.startswith("d-i passwd/username ") and len(line.split()) == 3:
        # osinfo-db's template leaves out the question's type ("string"), which debconf
        # would read as the type and leave the user name empty.
        return f"d-i passwd/username string {line.split()[2]}"
    return line


def _preseed(text: str, settings: Settings) -> str:
    out = [
        changed
        for line in text.splitlines()
        if (changed := _preseed_line(line, settings)) is not None
    ]
    if not settings.root_hash and not settings.user_hash:
        raise InvalidInput(
            "a Debian install needs --root-password-file or --user with --password-file",
            hint="the Debian installer refuses a system nobody can log in to",
        )
    if settings.packages:
        out.append(f"d-i pkgsel/include string {' '.join(settings.packages)}")
    if settings.ssh_keys:
        home = f"/home/{settings.user}" if settings.user else "/root"
        keys = "\\n".join(settings.ssh_keys)
        # debconf keeps the last late_command only: osinfo's own (success marker) comes first.
        out.append(
            "d-i preseed/late_command string in-target touch /root/osinfo-install-successful; "
            f'in-target sh -c \'mkdir -p {home}/.ssh && printf "{keys}\\n" >> '
            f"{home}/.ssh/authorized_keys && chmod 700 {home}/.ssh'"
        )
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ Ubuntu server (subiquity)
def _autoinstall_plan(settings: Settings) -> InstallPlan:
    if settings.script_text is not None:
        text, source = settings.script_text, "user file"
    else:
        text, source = autoinstall_user_data(settings), "kvmgr autoinstall"
    return InstallPlan(
        kind="autoinstall",
        filename="user-data",
        text=text,
        # subiquity reads the seed from the cidata CD; "autoinstall" skips its confirmation.
        cmdline="autoinstall console=ttyS0,115200",
        injection="cidata",
        source=source,
    )


def autoinstall_user_data(settings: Settings) -> str:
    import yaml

    if not settings.user or not settings.user_hash:
        raise InvalidInput(
            "an Ubuntu server install needs --user and --password-file",
            hint="subiquity's identity section requires a user with a password",
        )
    validate_name(settings.hostname, what="host name")
    autoinstall: dict[str, object] = {
        "version": 1,
        "locale": f"{settings.locale}.UTF-8",
        "keyboard": {"layout": "us"},
        "timezone": settings.timezone,
        "identity": {
            "hostname": settings.hostname,
            "username": settings.user,
            "password": settings.user_hash,
        },
        "ssh": {
            "install-server": True,
            "authorized-keys": settings.ssh_keys,
            "allow-pw": not settings.ssh_keys,
        },
        "storage": {"layout": {"name": "lvm"}},
        "shutdown": "poweroff",
    }
    if settings.packages:
        autoinstall["packages"] = settings.packages
    return "#cloud-config\n" + yaml.safe_dump({"autoinstall": autoinstall}, sort_keys=False)
