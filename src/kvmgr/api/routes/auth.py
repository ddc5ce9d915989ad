"""Login, logout, who am I, and API tokens of the caller."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from kvmgr.api.context import AppContext, TooManyAttempts, Unauthorized
from kvmgr.api.deps import SESSION_COOKIE, Ctx, Viewer, get_ctx
from kvmgr.store import users as users_store
from kvmgr.store.users import Principal

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class Login(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)


def _me(who: Principal) -> dict[str, Any]:
    return {
        "name": who.name,
        "role": who.role.value,
        "group": who.group,
        "csrf_token": who.csrf_token,
    }


def _login(
    ctx: AppContext, body: Login, address: str, old_cookie: str | None
) -> tuple[Principal, str, str]:
    wait, what = ctx.limiter.retry_after(body.name, address)
    if wait:
        raise TooManyAttempts(
            f"too many failed logins {what}", hint=f"try again in {max(wait, 1):.0f} s"
        )
    with ctx.store.session() as session:
        who = users_store.authenticate(session, body.name, body.password)
        if who is None:
            ctx.limiter.failed(body.name, address)
        else:
            ctx.limiter.succeeded(body.name, address)
            if old_cookie:
                # The session the browser had (perhaps planted by someone else) ends here.
                users_store.close_web_session(session, old_cookie)
            lifetime = timedelta(hours=ctx.settings.session_hours)
            cookie, csrf = users_store.open_web_session(session, who, lifetime)
    if who is None:
        ctx.audit(body.name, "auth.login", body.name, "denied", f"from {address}")
        raise Unauthorized("wrong user name or password")
    ctx.audit(who, "auth.login", who.name, "ok", f"from {address}")
    return who, cookie, csrf


@router.post("/login", summary="Log in; sets the session cookie, returns the CSRF token")
async def login(
    body: Login,
    request: Request,
    response: Response,
    ctx: Annotated[AppContext, Depends(get_ctx)],
) -> dict[str, Any]:
    address = request.client.host if request.client else "unknown"
    who, cookie, csrf = await run_in_threadpool(
        _login, ctx, body, address, request.cookies.get(SESSION_COOKIE)
    )
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(ctx.settings.session_hours * 3600),
        httponly=True,
        samesite="strict",
        secure=ctx.settings.cookie_secure,
        path="/",
    )
    return _me(Principal(who.id, who.name, who.role, who.group, csrf))


@router.post("/logout", summary="End this session")
def logout(request: Request, response: Response, who: Viewer, ctx: Ctx) -> dict[str, str]:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        with ctx.store.session() as session:
            users_store.close_web_session(session, cookie)
    response.delete_cookie(SESSION_COOKIE, path="/")
    ctx.audit(who, "auth.logout", who.name, "ok")
    return {"status": "logged out"}


@router.get("/me", summary="Who am I (and the CSRF token of this session)")
def me(who: Viewer) -> dict[str, Any]:
    return _me(who)


@router.get("/tokens", summary="My API tokens (never the token values)")
def list_tokens(who: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    with ctx.store.session() as session:
        return [
            {
                "id": token.id,
                "name": token.name,
                "created": token.created.isoformat(),
                "last_used": token.last_used.isoformat() if token.last_used else None,
            }
            for token in users_store.list_tokens(session, who.name)
        ]


@router.post("/tokens", status_code=201, summary="New API token; the value is shown only now")
def create_token(body: TokenCreate, who: Viewer, ctx: Ctx) -> dict[str, str]:
    def work() -> str:
        with ctx.store.session() as session:
            return users_store.create_token(session, who.name, body.name)

    token = ctx.audited(who, "token.create", body.name, work)
    return {"name": body.name, "token": token}


@router.delete("/tokens/{token_id}", summary="Revoke one of my API tokens")
def revoke_token(token_id: int, who: Viewer, ctx: Ctx) -> dict[str, str]:
    def work() -> None:
        with ctx.store.session() as session:
            users_store.revoke_token(session, who.name, token_id)

    ctx.audited(who, "token.revoke", str(token_id), work)
    return {"status": "revoked"}
