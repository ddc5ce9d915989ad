"""Moving VMs between registered hosts: migrate one VM, evacuate a host (admin; tasks).

The routes validate and hand the work to a task (``GET /api/v1/tasks/{id}`` shows its progress
from the migration job's statistics: while it runs, ``result.live`` holds the latest sample,
bytes of disk and memory done and total, memory remaining, rate, ETA, and the allowed downtime
steps; an evacuation's holds one such entry per VM under ``moves``); ``dry_run`` answers at
once with the preflight and, for ``to: auto``, every host's placement verdict.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmgr.api.deps import Admin, Ctx
from kvmgr.control.move_limits import EVACUATE_PARALLEL, EVACUATE_PARALLEL_MAX
from kvmgr.errors import InvalidState
from kvmgr.names import validate_name

router = APIRouter(tags=["moves"])


class MigrateRequest(BaseModel):
    to: str = Field(min_length=1, max_length=64, description="host name, or 'auto'")
    host: str | None = Field(default=None, max_length=64, description="source (default host)")
    offline: bool | None = None
    max_downtime_ms: int | None = Field(default=None, ge=1, le=600_000)
    bandwidth_mib: int | None = Field(default=None, ge=1, le=100_000)
    parallel: int | None = Field(default=None, ge=1, le=64)
    postcopy: bool = False
    require: dict[str, str] = Field(default_factory=dict, max_length=32)
    dry_run: bool = False


class EvacuateRequest(BaseModel):
    parallel: int = Field(
        default=EVACUATE_PARALLEL,
        ge=1,
        le=EVACUATE_PARALLEL_MAX,
        description="moves in flight at once (they share the source's link and disks)",
    )
    dry_run: bool = False


def _plane_and_hosts(ctx: Any, who: Any) -> tuple[Any, Any]:
    from kvmgr.control.hosts import HostRegistry
    from kvmgr.control.plane import ControlPlane

    registry = HostRegistry(ctx.store)
    return ControlPlane(ctx.store, who.name, registry.connect, leases=ctx.plane.leases), registry


@router.post("/api/v1/vms/{name}/migrate", summary="Move a VM to another host (a task)")
def migrate(name: str, body: MigrateRequest, who: Admin, ctx: Ctx) -> dict[str, Any]:
    from kvmgr.control.moves import migrate_vm
    from kvmgr.services.migration import MigrateOptions

    validate_name(name, what="VM name")
    plane, registry = _plane_and_hosts(ctx, who)
    source = body.host or ctx.host_name()
    options = MigrateOptions(
        offline=body.offline,
        max_downtime_ms=body.max_downtime_ms,
        bandwidth_mib=body.bandwidth_mib,
        parallel=body.parallel,
        postcopy=body.postcopy,
    )
    # The preflight runs now, so a refusal is an answer (409 with the reasons), not a failed task.
    check = ctx.audited(
        who, "vm.migrate.request", name,
        lambda: migrate_vm(plane, registry, name, source, body.to, options,
                           require=body.require, dry_run=True),
    )  # fmt: skip
    if body.dry_run:
        return dict(check.as_dict())
    if not check.check.ok:
        raise InvalidState(
            f"VM {name} cannot move: " + "; ".join(check.check.problems),
            hint="POST with dry_run: true lists every check",
        )
    params = {**body.model_dump(), "vm": name, "source": source, "to": check.target}
    return dict(ctx.submit(who, "vm.migrate", params, name))


@router.post("/api/v1/hosts/{name}/evacuate", summary="Move every VM off a host (a task)")
def evacuate(name: str, body: EvacuateRequest, who: Admin, ctx: Ctx) -> dict[str, Any]:
    from kvmgr.control.moves import plan_evacuation

    validate_name(name, what="host name")
    plane, registry = _plane_and_hosts(ctx, who)
    plan = ctx.audited(
        who, "host.evacuate.request", name, lambda: plan_evacuation(plane, registry, name)
    )
    if body.dry_run:
        return dict(plan.as_dict())
    params = {"host": name, "parallel": body.parallel}
    return dict(ctx.submit(who, "host.evacuate", params, name))
