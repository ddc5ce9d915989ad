"""Hints for API clients name API calls, not CLI commands.

Services write their hints once, in the CLI's words ("'kvmgr vm list' shows the VMs"); the REST
API answers with the call that does the same ("GET /api/v1/vms shows the VMs").  A command with
no API equivalent (``host daemons start``, ``vm edit``) is said to be run on the server.
"""

from __future__ import annotations

import re

_NAME = r"([^\s']+)"
_OPT = r"(?: [^']*)?"  # the command's options: the API's body carries them

#: (the quoted command, the API call), tried in order; \1, \2 are the command's names.
_CALLS: tuple[tuple[str, str], ...] = (
    (r"vm list", "GET /api/v1/vms"),
    (rf"vm info {_NAME}", r"GET /api/v1/vms/\1"),
    (
        rf"vm (start|shutdown|reboot|reset|off|pause|resume) {_NAME}{_OPT}",
        r"POST /api/v1/vms/\2/\1",
    ),
    (rf"vm delete {_NAME}{_OPT}", r"DELETE /api/v1/vms/\1"),
    (rf"vm autostart {_NAME}{_OPT}", r"PUT /api/v1/vms/\1/autostart"),
    (rf"vm set {_NAME}{_OPT}", r"PATCH /api/v1/vms/\1/resources"),
    (rf"vm clone {_NAME}{_OPT}", r"POST /api/v1/vms/\1/clone"),
    (rf"vm disk add {_NAME}{_OPT}", r"POST /api/v1/vms/\1/disks"),
    (rf"vm migrate {_NAME}{_OPT}", r"POST /api/v1/vms/\1/migrate"),
    (rf"vm console {_NAME}", r"POST /api/v1/vms/\1/console-token (then its websocket)"),
    (r"vm stats", "GET /api/v1/vms (the event stream carries live stats)"),
    (rf"snap list {_NAME}", r"GET /api/v1/vms/\1/snapshots"),
    (r"snap list", "GET /api/v1/vms/{name}/snapshots"),
    (rf"snap revert {_NAME} {_NAME}{_OPT}", r"POST /api/v1/vms/\1/snapshots/\2/revert"),
    (r"net list", "GET /api/v1/networks"),
    (rf"net (start|stop) {_NAME}", r"POST /api/v1/networks/\2/\1"),
    (rf"net unreserve {_NAME}{_OPT}", r"DELETE /api/v1/networks/\1/reservations/{ip}"),
    (r"iso list", "GET /api/v1/isos"),
    (rf"iso import{_OPT}", "POST /api/v1/isos"),
    (r"pool list", "GET /api/v1/pools"),
    (rf"pool create{_OPT}", "POST /api/v1/pools"),
    (rf"pool refresh {_NAME}", r"POST /api/v1/pools/\1/refresh"),
    (rf"vol list {_NAME}", r"GET /api/v1/pools/\1/volumes"),
    (r"backup list", "GET /api/v1/backups"),
    (r"host list", "GET /api/v1/hosts"),
    (r"user list", "GET /api/v1/users"),
)
_QUOTED = re.compile(r"'kvmgr ([^']+)'")
_COMPILED = tuple((re.compile(rf"{pattern}$"), call) for pattern, call in _CALLS)


def _call(command: str) -> str:
    for pattern, call in _COMPILED:
        match = pattern.match(command)
        if match:
            return match.expand(call)
    return f"an admin runs 'kvmgr {command}' on the server"


def for_api(hint: str | None) -> str | None:
    """``hint`` with each quoted kvmgr command replaced by its API call."""
    if not hint:
        return hint
    return _QUOTED.sub(lambda match: _call(match.group(1)), hint)
