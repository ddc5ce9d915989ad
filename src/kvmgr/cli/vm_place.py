"""Placement of a new VM from the CLI: ``kvmgr vm create NAME --host auto [--require k=v]
[--group G [--anti-affinity]] [--explain]`` (kvmgr.control.placement decides)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from kvmgr.cli.common import authz_on, err_console, state
from kvmgr.cli.output import OutputFormat, emit_rows

if TYPE_CHECKING:
    from kvmgr.connect import Connection
    from kvmgr.control.placement import Verdict
    from kvmgr.services.create import VMSpec


def place(
    spec: VMSpec,
    require: str | None,
    group: str | None,
    anti_affinity: bool,
    *,
    explain: bool,
) -> str:
    """Choose the host for ``spec``, make it this command's host, and say which and why."""
    from kvmgr.control.authz import check_vm_spec
    from kvmgr.control.hosts import parse_labels
    from kvmgr.control.placement import place_new

    def authorised(host: str, conn: Connection) -> VMSpec:
        there = copy.deepcopy(spec)  # each host resolves the paths in its own copy
        check_vm_spec(authz_on(conn, host), there)
        return there

    chosen, verdicts = place_new(
        state.hosts(), spec, require=parse_labels(require), group=group,
        anti_affinity=anti_affinity, authorise=authorised,
    )  # fmt: skip
    if explain:
        print_verdicts(verdicts)
    err_console.print(f"placed on host {chosen}: {verdicts[0].reason}", highlight=False)
    state.use_host(chosen)
    return chosen


def print_verdicts(verdicts: list[Verdict]) -> None:
    """Every host placement looked at, the chosen one first, with its reason."""
    rows = [
        {"host": v.host, "picked": "yes" if i == 0 and v.eligible else "no", "why": v.reason}
        for i, v in enumerate(verdicts)
    ]
    emit_rows(rows, OutputFormat.table, ["host", "picked", "why"])


def join_group(name: str, group: str, anti_affinity: bool) -> None:
    """Put the new VM ``name`` in placement group ``group`` (kept in its definition)."""
    from kvmgr.services.placement import Group, set_group

    plane = state.plane()
    with plane.lease(plane.vm_key(state.host_name(), name), "group"):
        set_group(state.connection(), name, Group(group, anti_affinity))
