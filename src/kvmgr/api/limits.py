"""The request body limit.  FastAPI reads and parses a JSON body before any dependency runs,
so without a limit anyone, logged in or not, could make the server buffer gigabytes.  No route
takes a large body (ISOs are imported from a host path, not uploaded), so 1 MiB is plenty."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1 << 20


class BodyLimit:
    """Answers 413 to a request whose body is longer than ``limit`` bytes: at once when its
    Content-Length says so, else as soon as that many bytes arrived (chunked bodies)."""

    def __init__(
        self, app: ASGIApp, limit: int = MAX_BODY_BYTES, headers: dict[str, str] | None = None
    ) -> None:
        self.app = app
        self.limit = limit
        self.headers = headers or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0
        refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    await self._refuse(scope, receive, send)
                    # The app sees a client that went away; whatever it answers is dropped.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {
                "error": f"the request body is larger than {self.limit / (1 << 20):g} MiB",
                "hint": "send a smaller body; files are imported from a path on the host",
                "kind": "InvalidInput",
            },
            status_code=413,
            headers={**self.headers, "Connection": "close"},
        )
        await response(scope, receive, send)
