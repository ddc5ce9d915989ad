"""Server-sent events: VM lifecycle changes (from anyone, also ``virsh``) and task progress.

Each client receives only what it may see: admins everything, others their own tasks and the
VMs they or their group own (kvmgr.control.events.may_receive; docs/SECURITY.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from kvmgr.api.deps import Ctx, Viewer
from kvmgr.control.events import may_receive

router = APIRouter(prefix="/api/v1", tags=["events"])
KEEPALIVE_SECONDS = 15.0


@router.get(
    "/events",
    summary="Event stream (text/event-stream): VM lifecycle and task updates",
    response_class=StreamingResponse,
)
async def events(request: Request, who: Viewer, ctx: Ctx) -> StreamingResponse:
    async def stream() -> AsyncIterator[str]:
        async with ctx.bus.subscribe() as queue:
            # A first comment flushes the headers so the client knows it is subscribed.
            yield f": subscribed live={str(ctx.events_live).lower()}\n\n"
            while not await request.is_disconnected():
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if not may_receive(who, event, ctx.feed.owners):
                    continue
                yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
