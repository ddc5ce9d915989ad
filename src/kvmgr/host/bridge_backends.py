"""Persistent host bridges, execution: a plan of :mod:`kvmgr.host.bridge_plans` carried out.

:mod:`kvmgr.host.bridge` moves an uplink onto a bridge at runtime with ``ip``; this module makes
the same change through the tool the host itself uses (NetworkManager, ifcfg, netplan), so it
survives a reboot and that tool does not undo it later: back up every file before changing it,
write, bring the change live, verify as the iproute2 path does, and on failure restore the files
byte for byte, bring the old configuration live again and check the uplink is as it was.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmgr.errors import HostError, InvalidInput, InvalidState
from kvmgr.host.bridge import BridgeResult, BridgeSpec, verify_moved
from kvmgr.host.bridge_ip import Argv, Ip, LinkState, differences
from kvmgr.host.bridge_plans import (
    BACKENDS,
    IFCFG_DIR,
    STATE_DIR,
    BackendPlan,
    NetworkFacts,
    Runner,
    build_plan,
    choose_backend,
    gather_facts,
    ifcfg_undo,
    under,
)


# ----------------------------------------------------------------------------------- backups
@dataclass
class Backup:
    """Copies of the files a plan changes, kept under STATE_DIR/BRIDGE until the bridge goes."""

    root: Path
    bridge: str
    changed: list[str] = field(default_factory=list)  # existed before: copied
    created: list[str] = field(default_factory=list)  # did not exist: removed on restore

    @property
    def directory(self) -> Path:
        return under(self.root, f"{STATE_DIR}/{self.bridge}")

    def take(self, paths: list[str]) -> None:
        if self.directory.exists():
            raise InvalidState(
                f"{self.directory} exists: an earlier bridge {self.bridge} left its backups",
                hint="restore or remove them first; kvmgr does not overwrite a backup",
            )
        for path in paths:
            source = under(self.root, path)
            if source.exists():
                copy = self.directory / "files" / path.lstrip("/")
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy)  # bytes, mode and times
                self.changed.append(path)
            else:
                self.created.append(path)

    def save(self, manifest: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {**manifest, "changed": self.changed, "created": self.created}
        (self.directory / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")

    def restore(self) -> list[str]:
        """Put every file back as it was; what could not be restored."""
        problems = []
        for path in self.changed:
            try:
                shutil.copy2(self.directory / "files" / path.lstrip("/"), under(self.root, path))
            except OSError as err:
                problems.append(f"{path}: {err}")
        for path in self.created:
            try:
                under(self.root, path).unlink(missing_ok=True)
            except OSError as err:
                problems.append(f"{path}: {err}")
        return problems

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    @classmethod
    def load(cls, root: Path, bridge: str) -> tuple[Backup, dict[str, Any]] | None:
        backup = cls(root, bridge)
        manifest_path = backup.directory / "manifest.json"
        if not manifest_path.is_file():
            return None
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        backup.changed = list(manifest.get("changed", []))
        backup.created = list(manifest.get("created", []))
        return backup, manifest


def write_file(target: Path, content: str, *, like: Path | None) -> None:
    """Write atomically (a reader never sees half a file), with the mode of the file it replaces.

    New files are 0600: netplan warns about (and newer versions refuse) world-readable files.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = (like.stat().st_mode & 0o7777) if like is not None and like.exists() else 0o600
    temporary = target.with_name(f".{target.name}.kvmgr-tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.chmod(temporary, mode)
    os.replace(temporary, target)


# ----------------------------------------------------------------------------------- execution
Verifier = Callable[[], None]


@dataclass(frozen=True)
class Settle:
    """How long the new configuration may take to come up (DHCP on the bridge takes seconds)."""

    timeout: float = 30.0
    interval: float = 1.0


def wait_verified(verify: Verifier, settle: Settle) -> None:
    deadline = time.monotonic() + settle.timeout
    while True:
        try:
            verify()
            return
        except HostError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(settle.interval)


def apply_plan(
    plan: BackendPlan,
    before: LinkState,
    *,
    root: Path,
    runner: Runner,
    ip: Ip,
    ping: str | None = None,
    ping_timeout: float = 3.0,
    settle: Settle | None = None,
) -> None:
    """Carry out ``plan``; on any failure undo it exactly and raise :class:`HostError`."""
    settle = settle or Settle()
    backup = Backup(root, plan.bridge)
    backup.take(sorted(plan.files))
    backup.save({"backend": plan.backend, "uplink": plan.uplink})
    done: list[Argv] = []
    try:
        for path, content in plan.files.items():
            target = under(root, path)
            if content is None:
                target.unlink(missing_ok=True)
            else:
                write_file(target, content, like=target)
        for command in plan.commands:
            runner(command)
            done.append(command)
        wait_verified(lambda: verify_moved(ip, before, plan.bridge, ping, ping_timeout), settle)
    except (HostError, OSError) as err:
        cause = err if isinstance(err, HostError) else HostError(f"writing files failed: {err}")
        rollback(plan, before, backup, done, runner=runner, ip=ip, cause=cause, settle=settle)
    if plan.backend == "nmcli":
        backup.save({"backend": plan.backend, "uplink": plan.uplink, "plan": plan.as_dict()})


def rollback(
    plan: BackendPlan,
    before: LinkState,
    backup: Backup,
    done: list[Argv],
    *,
    runner: Runner,
    ip: Ip,
    cause: HostError,
    settle: Settle,
) -> None:
    """Restore the files byte for byte, undo the commands that ran, bring the old state live."""
    problems = backup.restore()
    undo_added = dict(plan.undo_added)
    undo = [undo_added[c] for c in reversed(done) if c in undo_added]
    problems += _run_all(undo, runner)
    problems += _delete_link(ip, plan.bridge)
    problems += _run_all(plan.undo, runner)
    left: list[str] = []
    try:
        wait_verified(lambda: _restored(ip, before), settle)
    except HostError as err:
        left.append(err.message)
    if not problems:
        backup.discard()
    if left or problems:
        raise HostError(
            f"creating {plan.bridge} ({plan.backend}) failed ({cause.message}) and the rollback "
            f"is incomplete: {'; '.join(left + problems)}",
            hint=f"backups are in {backup.directory}; {before.name} was {before.as_dict()}",
        ) from cause
    raise HostError(
        f"creating {plan.bridge} ({plan.backend}) failed; {before.name} and its configuration "
        f"files were restored as they were: {cause.message}",
        hint=cause.hint,
    ) from cause


def _run_all(commands: list[Argv] | tuple[Argv, ...], runner: Runner) -> list[str]:
    """Run every command even when one fails (an undo does as much as it can); the failures."""
    problems = []
    for command in commands:
        try:
            runner(command)
        except HostError as err:
            problems.append(err.message)
    return problems


def _delete_link(ip: Ip, bridge: str) -> list[str]:
    """Remove the bridge device itself: neither ``netplan apply`` nor ``ifup`` deletes a virtual
    device that is no longer configured.  Only called for a bridge this kvmgr run or record made.
    """
    if not ip.link_exists(bridge):
        return []
    try:
        ip.run(("link", "del", "dev", bridge))
    except HostError as err:
        # NetworkManager removes the device itself after its profile is deleted, in its own
        # time: gone between the check and the delete is the outcome wanted (seen 1 run in 6).
        return [] if not ip.link_exists(bridge) else [err.message]
    return []


def _restored(ip: Ip, before: LinkState) -> None:
    if ip.link_exists(before.name):
        left = differences(before, ip.read(before.name))
        if left:
            raise HostError(f"{before.name} is not as it was: {'; '.join(left)}")
        return
    raise HostError(f"{before.name} is gone")


def plan_for(
    requested: str, before: LinkState, bridge: str, *, root: Path, runner: Runner
) -> tuple[str, BackendPlan | None, str]:
    """(backend, its plan or None for iproute2, why that backend) for moving ``before``."""
    if requested not in BACKENDS:
        raise InvalidInput(
            f"unknown bridge backend {requested!r}", hint=f"use one of {', '.join(BACKENDS)}"
        )
    facts = gather_facts(before.name, root=root, runner=runner)
    chosen = choose_backend(facts) if requested == "auto" else requested
    reason = f"backend {chosen}: " + (_why(facts) if requested == "auto" else "chosen by --backend")
    if chosen == "iproute2":
        return chosen, None, reason
    spec = BridgeSpec.from_state(bridge, before)
    plan = build_plan(chosen, spec, facts, root=root, runner=runner, routes=before.routes)
    return chosen, plan, reason


def _why(facts: NetworkFacts) -> str:
    if facts.netplan_files:
        return f"{', '.join(facts.netplan_files)} define {facts.uplink}"
    if facts.nm_manages_uplink:
        return f"NetworkManager manages {facts.uplink} ({facts.nm_state})"
    if facts.ifcfg:
        return f"{IFCFG_DIR}/ifcfg-{facts.uplink} exists and NetworkManager does not manage it"
    return f"nothing persistent configures {facts.uplink}: runtime change only"


def delete_persistent(
    bridge: str,
    *,
    ip: Ip,
    yes: bool,
    dry_run: bool,
    root: Path,
    runner: Runner,
    settle: Settle | None = None,
) -> BridgeResult:
    """Undo a persistent bridge from what kvmgr recorded when it made it.

    Files come back from their backups byte for byte; nmcli connections kvmgr added are deleted
    and the uplink's old connection is brought up again; then the bridge device goes.
    """
    loaded = Backup.load(root, bridge)
    assert loaded is not None  # the caller found the record
    backup, manifest = loaded
    backend, uplink = str(manifest["backend"]), str(manifest["uplink"])
    state = ip.read(bridge) if ip.link_exists(bridge) else None
    if state is not None and state.default_route is not None and not yes:
        raise InvalidState(
            f"{bridge} carries the default route",
            hint="check the plan with --dry-run, then repeat with --yes",
        )
    commands = _removal_commands(backend, bridge, uplink, manifest, runner)
    result = BridgeResult(
        bridge,
        uplink,
        ip.netns,
        [shlex.join(c) for c in commands],
        dry_run,
        backend=backend,
        files={path: _backup_text(backup, path) for path in backup.changed}
        | dict.fromkeys(backup.created),
        notes=[f"files restored from {backup.directory}"] if backup.changed else [],
    )
    if dry_run:
        return result
    undo_added = [c for c in commands if c[:3] == ("nmcli", "connection", "delete")]
    problems = backup.restore() + _run_all(undo_added, runner) + _delete_link(ip, bridge)
    problems += _run_all([c for c in commands if c not in undo_added], runner)
    wanted = {a.cidr for a in state.addresses if not a.dynamic} if state else set()

    def uplink_has_addresses() -> None:
        missing = wanted - {a.cidr for a in ip.read(uplink).addresses}
        if missing:
            raise HostError(f"{uplink} lacks {', '.join(sorted(missing))} after the removal")

    try:
        wait_verified(uplink_has_addresses, settle or Settle())
    except HostError as err:
        problems.append(err.message)
    if problems:
        raise HostError(
            f"removing {bridge} ({backend}) is incomplete: {'; '.join(problems)}",
            hint=f"the backups stay in {backup.directory}",
        )
    backup.discard()
    result.moved = ip.read(uplink)
    return result


def _backup_text(backup: Backup, path: str) -> str:
    return (backup.directory / "files" / path.lstrip("/")).read_text()


def _removal_commands(
    backend: str, bridge: str, uplink: str, manifest: dict[str, Any], runner: Runner
) -> list[Argv]:
    if backend == "nmcli":
        plan = manifest.get("plan", {})
        added = [tuple(str(a) for a in pair[1]) for pair in plan.get("undo_added", [])]
        return [*reversed(added), *(tuple(str(a) for a in c) for c in plan.get("undo", []))]
    if backend == "netplan":
        return [("netplan", "apply")]
    nm = runner.have("nmcli") and runner(("nmcli", "general"), check=False).returncode == 0
    return list(ifcfg_undo(BridgeSpec(bridge, uplink, "", (), None, False), nm=nm))
