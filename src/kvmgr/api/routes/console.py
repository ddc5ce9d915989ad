"""Consoles in the browser: the serial console (xterm.js) and the graphical one (noVNC).

A client first asks for a console token (a normal authenticated, CSRF-checked request, refused
unless the caller may act on the VM), then opens the websocket with it.  The websocket handler
itself redeems the token: random, single use, expiring in ``console_token_seconds``, bound to the
user, the VM and the console kind.  Nothing else opens a console.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from typing import Annotated, Literal
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from kvmgr.api.context import AppContext
from kvmgr.api.deps import Ctx, Operator
from kvmgr.errors import KvmgrError
from kvmgr.services import vnc as vnc_service
from kvmgr.services.console import ConsoleBusy, ConsoleSession
from kvmgr.store.users import Principal

router = APIRouter(prefix="/api/v1/vms", tags=["console"])

#: Close codes in the 4000 range are ours: the page shows why the console closed.
CLOSE_REFUSED = 4403
CLOSE_ERROR = 4500
CLOSE_BUSY = 4409  # someone else has the console: the page may offer to take over
#: A signed token carries its grant (user, VM name, kind, expiry): a few hundred characters.
TOKEN_MAX = 1024
_READ_SLICE = 0.1  # seconds one blocking console read may take (bounds shutdown latency)


class ConsoleTokenRequest(BaseModel):
    kind: Literal["serial", "vnc"] = "serial"


@router.post("/{name}/console-token", summary="A single-use token to open a console websocket")
def console_token(
    name: str, body: ConsoleTokenRequest, who: Operator, ctx: Ctx
) -> dict[str, object]:
    def work(conn: object) -> str:
        return ctx.console_tokens.issue(who, name, body.kind, ctx.host_name())

    token = ctx.act(who, f"console.{body.kind}.token", name, work, vm=name, lease=False)
    path = "console" if body.kind == "serial" else "vnc"
    # the websocket names the host too (?host=), so it opens the VM the token is for
    query = urlencode({"token": token, "host": ctx.host_name()})
    return {
        "token": token,
        "expires_in": ctx.settings.console_token_seconds,
        "url": f"/api/v1/vms/{name}/{path}?{query}",
    }


def same_origin(websocket: WebSocket) -> bool:
    """False when a browser opens the socket from a page of another site.

    Browsers send any page's Origin on a websocket handshake and CORS does not apply, so this is
    the check that keeps another site's page off the console.  Clients that are not browsers
    send no Origin and rely on the token alone.
    """
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    host = websocket.headers.get("host", "")
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


def _admit(ctx: AppContext, token: str, name: str, kind: str) -> Principal | None:
    """The token's user, if valid and (still) allowed to act on the VM."""
    who = ctx.console_tokens.redeem(token, name, kind, ctx.host_name())
    if who is None:
        return None
    try:
        ctx.check_vm(ctx.conn(), who, name)
    except KvmgrError:
        return None
    return who


#: Who has each VM's serial console open through this server: (user, since).  A refused
#: second viewer is told who; a session opened elsewhere (a CLI) is only "another session".
_holders: dict[str, tuple[str, float]] = {}
_holders_lock = threading.Lock()


def _held_by(name: str) -> str:
    with _holders_lock:
        holder = _holders.get(name)
    if holder is None:
        return "another session (a CLI, or another server)"
    user, since = holder
    return f"{user} (web, since {time.strftime('%H:%M:%S', time.localtime(since))})"


@router.websocket("/{name}/console")
async def serial_console(
    websocket: WebSocket,
    name: str,
    token: Annotated[str, Query(max_length=TOKEN_MAX)] = "",
    force: Annotated[bool, Query(description="take the console over from its holder")] = False,
) -> None:
    ctx: AppContext = websocket.app.state.ctx
    who = await run_in_threadpool(_admit, ctx, token, name, "serial")
    if who is None or not same_origin(websocket):
        await websocket.close(code=CLOSE_REFUSED)  # before accept: the handshake gets 403
        return
    await websocket.accept()
    try:
        session = await run_in_threadpool(
            functools.partial(ConsoleSession, ctx.conn(), name, force=force)
        )
    except ConsoleBusy:
        # The page offers to take over: it reconnects with force=1 after the user agrees.
        await websocket.close(code=CLOSE_BUSY, reason=f"held by {_held_by(name)}"[:120])
        return
    except KvmgrError as err:
        await websocket.close(code=CLOSE_ERROR, reason=err.message[:120])
        return
    action = "console.serial.takeover" if force else "console.serial.open"
    await run_in_threadpool(ctx.audit, who, action, name, "ok")
    mine = (who.name, time.time())
    with _holders_lock:
        _holders[name] = mine
    try:
        await _bridge_serial(websocket, session)
    finally:
        with _holders_lock:
            if _holders.get(name) == mine:
                del _holders[name]
        await run_in_threadpool(session.close)


async def _bridge_serial(websocket: WebSocket, session: ConsoleSession) -> None:
    # One libvirt stream must not be read and written from two threads at once (the stream then
    # fails with an I/O error): every call on it holds this lock.  Reads are short slices, so a
    # keystroke waits at most one slice.
    lock = threading.Lock()

    def read() -> bytes:
        with lock:
            return session.read(_READ_SLICE)

    def write(payload: bytes) -> None:
        with lock:
            session.write(payload)

    async def guest_to_browser() -> None:
        while True:
            try:
                data = await run_in_threadpool(read)
            except KvmgrError:
                return  # the VM stopped, or the console was taken over
            if data:
                await websocket.send_bytes(data)
            else:
                await asyncio.sleep(0)  # let the writer take the lock between empty reads

    async def browser_to_guest() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                payload = message.get("bytes") or (message.get("text") or "").encode()
                if payload:
                    await run_in_threadpool(write, payload)

    await _until_first_ends(guest_to_browser(), browser_to_guest())
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close()


async def _until_first_ends(*coroutines: object) -> None:
    tasks = [asyncio.ensure_future(coro) for coro in coroutines]  # type: ignore[call-overload]
    try:
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await task
    del pending


@router.websocket("/{name}/vnc")
async def vnc_console(
    websocket: WebSocket, name: str, token: Annotated[str, Query(max_length=TOKEN_MAX)] = ""
) -> None:
    ctx: AppContext = websocket.app.state.ctx
    who = await run_in_threadpool(_admit, ctx, token, name, "vnc")
    if who is None or not same_origin(websocket):
        await websocket.close(code=CLOSE_REFUSED)
        return
    wants_binary = "binary" in websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol="binary" if wants_binary else None)
    try:
        # through libvirt (a descriptor: any display, whatever its socket's permissions or the
        # daemon's network namespace); noVNC then does the handshake with QEMU itself
        display, _password = await run_in_threadpool(vnc_service.open_display, ctx.conn(), name)
        display.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=display)
    except (KvmgrError, OSError) as err:
        await websocket.close(code=CLOSE_ERROR, reason=str(err)[:120])
        return
    await run_in_threadpool(ctx.audit, who, "console.vnc.open", name, "ok")

    async def vnc_to_browser() -> None:
        while data := await reader.read(65536):
            await websocket.send_bytes(data)

    async def browser_to_vnc() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                payload = message.get("bytes") or (message.get("text") or "").encode()
                writer.write(payload)
                await writer.drain()

    try:
        await _until_first_ends(vnc_to_browser(), browser_to_vnc())
    finally:
        writer.close()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close()
