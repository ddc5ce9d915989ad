"""``scripts/lab``: build, inspect and remove a lab of libvirt hosts (see :mod:`kvmgr.host.lab`).

scripts/lab up [--hosts 3] [--slot 0] [--json]   build and start it, print each host's URIs
scripts/lab status [--slot 0] [--json]           daemons and answers per host
scripts/lab down [--slot 0 | --all]              kill and remove everything of a lab
scripts/lab shell [--slot 0] h1 [CMD ...]        run CMD (a shell) in host h1's namespaces
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kvmgr.errors import KvmgrError
from kvmgr.host import lab


def _describe(built: lab.Lab) -> dict[str, object]:
    return {
        "name": built.name,
        "hosts": [
            {
                "name": host.name,
                "address": host.address,
                "host_uuid": host.host_uuid,
                "ssh": built.ssh_uri(host),
                "tls": built.tls_uri(host),
                "local": host.local_uri,
            }
            for host in built.hosts
        ],
    }


def _up(options: argparse.Namespace) -> None:
    built = lab.up(options.hosts, slot=options.slot)
    if options.json:
        print(json.dumps(_describe(built), indent=2))
        return
    for host in built.hosts:
        print(f"{host.name}  {host.address}  uuid {host.host_uuid}")
        print(f"  ssh   {built.ssh_uri(host)}")
        print(f"  tls   {built.tls_uri(host)}")
        print(f"  local {host.local_uri}")


def _down(options: argparse.Namespace) -> None:
    for each in lab.existing() if options.all else [lab.lab_name(options.slot)]:
        for line in lab.down(each):
            print(f"{each}: {line}")


def _status(options: argparse.Namespace) -> None:
    found = lab.status(lab.lab_name(options.slot))
    if options.json:
        print(json.dumps([vars(host) for host in found], indent=2))
        return
    for host in found:
        running = " ".join(f"{d}={pid or '-'}" for d, pid in host.daemons.items())
        print(f"{host.name}  {host.address}  {'answers' if host.answers else 'DOWN'}  {running}")


def _shell(options: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not options.args:
        parser.error("shell needs a host: scripts/lab shell h1 [command ...]")
    built = lab.load(lab.lab_name(options.slot))
    host = built.host(options.args[0])
    command = options.args[1:] or [os.environ.get("SHELL", "/bin/sh")]
    os.execvp("nsenter", [*lab.enter(built, host), *command])  # noqa: S606  (argv, no shell)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/lab", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status", "shell"])
    parser.add_argument("--hosts", type=int, default=3, help="up: how many hosts (default 3)")
    parser.add_argument("--slot", type=int, default=0, help="which lab (0..9, default 0)")
    parser.add_argument("--all", action="store_true", help="down: every lab on this machine")
    parser.add_argument("--json", action="store_true", help="up/status: print JSON")
    argv = sys.argv[1:] if argv is None else argv
    # ``shell h1 CMD ...``: everything from the host on belongs to the command, options included.
    split = len(argv)
    if argv[:1] == ["shell"]:
        split = next(
            (i for i in range(1, len(argv)) if argv[i][:1] != "-" and argv[i - 1] != "--slot"),
            len(argv),
        )
    options = parser.parse_args(argv[:split])
    options.args = argv[split:]
    try:
        if options.command == "up":
            _up(options)
        elif options.command == "down":
            _down(options)
        elif options.command == "status":
            _status(options)
        else:
            _shell(options, parser)
    except KvmgrError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
