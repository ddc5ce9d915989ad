"""Every command of the ``kvmgr`` CLI, found by walking the command tree (new commands included),
with arguments made up to name objects that do not exist."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import typer
from typer import _click as click

from kvmgr.cli.main import app

#: Commands the sweep never runs, and why: they change this machine or wait for a person.
NOT_RUN = {
    "host setup": "installs packages and starts services on this machine",
    "host daemons start": "starts the system's libvirt daemons",
    "host daemons stop": "stops the system's libvirt daemons that other tests use",
    "host bridge create": "changes this machine's network",
    "host bridge delete": "changes this machine's network",
    "serve": "serves until stopped",
    "worker": "runs tasks until stopped",
    "vm console": "attaches the terminal to a console",
    "vm edit": "opens $EDITOR",
    "image build-demo-iso": "builds an ISO (minutes; covered by its own tests)",
}

#: A made-up value per argument name: each names something that does not exist.
_VALUES = {
    "size": "1G",
    "enabled": "on",
    "role": "viewer",
    "mac": "52:54:00:00:0e:99",
    "target": "vdz",
    "uri": "qemu+ssh://root@127.0.0.1:1/system",  # loopback, closed port: refused at once
}
_MISSING_PATH = "/nonexistent/kvmgr-sweep/file"


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    arguments: tuple[str, ...]

    @property
    def name(self) -> str:
        return " ".join(self.path)

    def argv(self) -> list[str]:
        return [*self.path, *self.arguments]


def all_commands() -> list[Command]:
    root = typer.main.get_command(app)
    context = click.Context(root)
    found: list[Command] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        if hasattr(command, "list_commands"):
            for sub in command.list_commands(context):
                walk(command.get_command(context, sub), (*path, sub))
            return
        found.append(Command(path, tuple(_value(p) for p in _required_arguments(command))))

    walk(root, ())
    return found


def _required_arguments(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "argument" and p.required]


def _value(param: Any) -> str:
    name = param.name or ""
    if name in _VALUES:
        return _VALUES[name]
    if name in ("file", "path", "source") or "path" in name:
        return _MISSING_PATH
    return f"sweep-missing-{name}"
