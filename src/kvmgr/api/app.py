"""The FastAPI app: REST API under ``/api/v1``, the web UI, ``/metrics``; one process.

``create_app(settings)`` builds it; ``kvmgr serve`` runs it with uvicorn.  Security headers are
set on every answer, ``KvmgrError`` becomes a JSON error with the hint (or, for a page, the login
redirect), and libvirt work runs in the thread pool (sync routes) or in tasks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import libvirt
from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kvmgr import __version__
from kvmgr.api.context import AppContext, Unauthorized
from kvmgr.api.deps import SAFE_METHODS, identify, request_host
from kvmgr.api.hints import for_api
from kvmgr.api.limits import MAX_BODY_BYTES, BodyLimit
from kvmgr.api.routes import (
    audit,
    auth,
    backups,
    console,
    events,
    host,
    hosts,
    images,
    isos,
    metrics,
    moves,
    networks,
    snapshots,
    stats_history,
    storage,
    tasks,
    users,
    vms,
)
from kvmgr.api.routes import pages as web_pages
from kvmgr.api.settings import Settings
from kvmgr.errors import KvmgrError, at_the_boundary

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        # xterm.js and Swagger UI set element styles at run time.
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def _routers() -> list[object]:
    routers = [
        auth,
        users,
        audit,
        tasks,
        events,
        host,
        hosts,
        snapshots,
        moves,  # before vms: "/{name}/migrate" is not one of vms' "/{name}/{action}"
        backups,
        vms,
        stats_history,
        console,
        networks,
        storage,
        isos,
        images,
    ]
    return [module.router for module in routers]


def create_app(settings: Settings, *, context: AppContext | None = None) -> FastAPI:
    ctx = context or AppContext(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.start()
        try:
            yield
        finally:
            ctx.stop()

    app = FastAPI(
        title="kvmgr",
        version=__version__,
        description="Take a bare Linux host to running KVM VMs, and manage them, through libvirt.",
        openapi_url=None,  # served by pages.py to logged-in users only
        docs_url=None,  # served by pages.py with local assets (the CSP allows no CDN)
        redoc_url=None,
        lifespan=lifespan,
        dependencies=[Depends(request_host)],
    )
    app.state.ctx = ctx
    # console's router must come before vms': '/{name}/console-token' vs '/{name}/{action}'.
    app.include_router(console.router)
    for router in _routers():
        if router is not console.router:
            app.include_router(router)  # type: ignore[arg-type]
    app.include_router(metrics.router)
    app.include_router(web_pages.router)
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static", check_dir=False), "static")
    _install_handlers(app)
    # Outermost, so an oversized body is refused before anything reads it.
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, headers=SECURITY_HEADERS)
    return app


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` (and ``Cache-Control: no-store`` under ``/api/``) to every
    answer that does not set them.  Plain ASGI, not ``@app.middleware("http")``: Starlette's
    BaseHTTPMiddleware runs each request in a task group with a memory stream, a fixed cost per
    request that was a visible share of a warm ``GET /api/v1/vms``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = str(scope.get("path", "")).startswith("/api/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if api:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, with_headers)


def _install_handlers(app: FastAPI) -> None:
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(KvmgrError)
    async def kvmgr_error(request: Request, err: KvmgrError) -> Response:
        if isinstance(err, Unauthorized) and _wants_page(request):
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        # Services say what to do in the CLI's words; API clients get the API call.
        body = {"error": err.message, "hint": for_api(err.hint), "kind": err.__class__.__name__}
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(err, Unauthorized) else None
        return JSONResponse(body, status_code=err.http_status, headers=headers)

    @app.exception_handler(libvirt.libvirtError)
    @app.exception_handler(OSError)
    @app.exception_handler(ValueError)
    async def escaped_error(request: Request, err: Exception) -> Response:
        # A service let a libvirt or file error through: answer as for its kvmgr translation.
        translated = at_the_boundary(err)
        if translated is None:
            raise err
        return await kvmgr_error(request, translated)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> Response:
        errors = err.errors()
        problems = [
            {"where": ".".join(str(part) for part in item.get("loc", ())), "problem": item["msg"]}
            for item in errors
        ]
        first = problems[0] if problems else {"where": "request", "problem": "invalid"}
        message = f"{first['where']}: {first['problem']}"
        hint = "see /api/docs for the expected request"
        if errors and errors[0].get("type") == "json_invalid":
            # FastAPI names the place as 'body.<character offset>': say what it means.
            at = errors[0].get("loc", ("body", "?"))[-1]
            message = f"the request body is not valid JSON (at character {at})"
            hint = "send a JSON object with the fields shown in /api/docs"
        await run_in_threadpool(_audit_refused_change, request, message)
        return JSONResponse(
            {
                "error": message,
                "hint": hint,
                "kind": "InvalidInput",
                "problems": problems,
            },
            status_code=422,
        )


def _audit_refused_change(request: Request, message: str) -> None:
    """An audit row for a change refused for its shape.  Authentication and the role check ran
    before the body was validated, so the caller is known (anonymous callers got a 401)."""
    if request.method in SAFE_METHODS:
        return
    ctx: AppContext = request.app.state.ctx
    who = identify(request, ctx)
    if who is not None:
        ctx.audit(who, f"{request.method} {request.url.path}", "", "error", message)


def _wants_page(request: Request) -> bool:
    path = request.url.path
    return not (path.startswith("/api/") or path == "/metrics") and request.method == "GET"
