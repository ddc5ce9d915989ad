"""Cross-cutting dependencies of every route: who is asking, and may they.

A route declares its minimum role with one of :data:`Viewer`, :data:`Operator`, :data:`Admin`;
there is no other way to get a :class:`Principal`, so a route cannot forget the check.
Cookie-authenticated requests that change something must echo the session's CSRF token in the
``X-CSRF-Token`` header; API tokens (sent by scripts, never by a browser on its own) need none.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from kvmgr.api.context import REQUEST_HOST, AppContext, Unauthorized
from kvmgr.errors import Forbidden
from kvmgr.store import users as users_store
from kvmgr.store.models import Role
from kvmgr.store.users import Principal

SESSION_COOKIE = "kvmgr_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# get_ctx and the role guard are ``async def`` because they never block: FastAPI runs a sync
# dependency in the thread pool, and each hop cost ~0.2-0.5 ms of a warm GET /api/v1/vms.
async def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


def identify(request: Request, ctx: AppContext) -> Principal | None:
    """The caller from ``Authorization: Bearer`` or the session cookie; None if neither is valid."""
    header = request.headers.get("authorization", "")
    scheme, _sep, token = header.partition(" ")
    with ctx.store.session() as session:
        if scheme.lower() == "bearer" and token:
            return users_store.principal_for_token(session, token.strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return users_store.principal_for_cookie(session, cookie)
    return None


def current_user(request: Request, ctx: Ctx) -> Principal:
    who = identify(request, ctx)
    if who is None:
        raise Unauthorized(
            "log in first", hint="send a session cookie (POST /api/v1/auth/login) or an API token"
        )
    if request.method not in SAFE_METHODS and who.csrf_token is not None:
        sent = request.headers.get(CSRF_HEADER, "")
        if not secrets.compare_digest(sent, who.csrf_token):
            raise Forbidden(
                "the CSRF token is missing or wrong",
                hint=f"send the token from /api/v1/auth/me in the {CSRF_HEADER} header",
            )
    return who


def require(role: Role) -> Callable[[Request, AppContext, Principal], Awaitable[Principal]]:
    """A dependency that admits users of ``role`` or a higher one."""

    async def guard(
        request: Request,
        ctx: Ctx,
        who: Annotated[Principal, Depends(current_user)],
    ) -> Principal:
        if not who.at_least(role):
            if request.method not in SAFE_METHODS:
                action = f"{request.method} {request.url.path}"
                await run_in_threadpool(ctx.audit, who, action, "", "denied", role.value)
            raise Forbidden(
                f"user {who.name!r} is a {who.role.value}; this needs {role.value}",
                hint="ask an admin for a higher role",
            )
        return who

    guard.min_role = role  # type: ignore[attr-defined]  # read by the route-coverage test
    return guard


Viewer = Annotated[Principal, Depends(require(Role.viewer))]
Operator = Annotated[Principal, Depends(require(Role.operator))]
Admin = Annotated[Principal, Depends(require(Role.admin))]


async def request_host(
    host: Annotated[
        str | None,
        Query(
            max_length=64,
            description="registered host to act on (GET /api/v1/hosts); default: the server's",
        ),
    ] = None,
) -> None:
    """``?host=NAME`` on any route: the host its libvirt work and lease keys are for.

    An app-wide dependency, so no route can forget it.  Each request runs in its own context,
    so the value never leaks to another request; tasks it submits inherit it.
    """
    if host is not None:
        from kvmgr.names import validate_name

        validate_name(host, what="host name")
    REQUEST_HOST.set(host)
