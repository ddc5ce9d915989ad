"""Users and roles (admins only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmgr.api.deps import Admin, Ctx
from kvmgr.store import users as users_store
from kvmgr.store.models import Role, User

router = APIRouter(prefix="/api/v1/users", tags=["users"])


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    role: Role = Role.viewer
    group: str | None = Field(default=None, max_length=64)


class UserUpdate(BaseModel):
    """Only the fields sent change; ``"group": null`` takes the user out of their group."""

    role: Role | None = None
    group: str | None = Field(default=None, max_length=64)
    password: str | None = Field(default=None, max_length=1024)


def user_public(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "role": user.role,
        "group": user.group,
        "created": user.created.isoformat(),
    }


@router.get("", summary="All users")
def list_users(_who: Admin, ctx: Ctx) -> list[dict[str, Any]]:
    with ctx.store.session() as session:
        return [user_public(user) for user in users_store.list_users(session)]


@router.post("", status_code=201, summary="Create a user")
def create_user(body: UserCreate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        with ctx.store.session() as session:
            users_store.create_user(session, body.name, body.password, body.role, body.group)
            return user_public(users_store.get_user(session, body.name))

    return ctx.audited(who, "user.create", body.name, work)


@router.patch("/{name}", summary="Change a user's role, group or password")
def update_user(name: str, body: UserUpdate, who: Admin, ctx: Ctx) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        with ctx.store.session() as session:
            users_store.get_user(session, name)
            if body.role is not None:
                users_store.set_role(session, name, body.role)
            if "group" in body.model_fields_set:
                users_store.set_group(session, name, body.group or None)
            if body.password is not None:
                users_store.set_password(session, name, body.password)
            return user_public(users_store.get_user(session, name))

    return ctx.audited(who, "user.update", name, work)


@router.delete("/{name}", summary="Delete a user (their VMs stay)")
def delete_user(name: str, who: Admin, ctx: Ctx) -> dict[str, str]:
    def work() -> None:
        with ctx.store.session() as session:
            users_store.delete_user(session, name)

    ctx.audited(who, "user.delete", name, work)
    return {"status": "deleted"}
