"""Users, passwords (argon2), API tokens and web sessions: the rules of who is who.

Tokens and session ids are random (``secrets``) and stored only as SHA-256 hashes, so a copy of
the database does not let anyone log in.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from kvmgr.errors import AlreadyExists, InvalidInput, NotFound
from kvmgr.names import validate_name
from kvmgr.store import ownership
from kvmgr.store.models import ApiToken, Role, User, WebSession, aware, utcnow

if TYPE_CHECKING:
    from argon2 import PasswordHasher

MIN_PASSWORD_LENGTH = 8
TOKEN_PREFIX = "kvm_"  # noqa: S105 - a marker that makes leaked tokens greppable


# Made on first use, not at import: every CLI command imports this module (Principal), and an
# argon2 hash (64 MiB, three passes) took 0.8 s of ``kvmgr vm create``'s start-up under load.
@functools.cache
def _hasher() -> PasswordHasher:
    from argon2 import PasswordHasher

    return PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verifying against this keeps a login for an unknown user as slow as for a known one."""
    return _hasher().hash("not a password of anyone")


@dataclass(frozen=True)
class Principal:
    """Who is asking: the facts every permission check needs, detached from any DB session."""

    id: int
    name: str
    role: Role
    group: str | None
    csrf_token: str | None = None  # set for web sessions: mutating requests must echo it

    def at_least(self, role: Role) -> bool:
        return self.role.at_least(role)


def _principal(user: User, csrf: str | None = None) -> Principal:
    return Principal(user.id, user.name, user.role_enum, user.group, csrf)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise InvalidInput(
            f"role {text!r} is not known", hint="use admin, operator or viewer"
        ) from None


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"the password has {len(password)} characters",
            hint=f"use at least {MIN_PASSWORD_LENGTH}",
        )


# ------------------------------------------------------------------ users
def create_user(
    session: Session, name: str, password: str, role: Role, group: str | None = None
) -> Principal:
    validate_name(name, what="user name")
    if group is not None:
        validate_name(group, what="group name")
    _check_password(password)
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise AlreadyExists(f"user {name!r} exists already", hint="choose another name")
    user = User(
        # Never a deleted user's id: what they owned stays theirs (a tombstone), not the new user's.
        id=ownership.next_user_id(session),
        name=name,
        password_hash=_hasher().hash(password),
        role=role.value,
        group=group,
    )
    session.add(user)
    session.flush()
    return _principal(user)


def get_user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"user {name!r} does not exist", hint="'kvmgr user list' shows the users")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def delete_user(session: Session, name: str) -> None:
    """Remove a user and every login of theirs; what they own stays owned by their id."""
    user = get_user(session, name)
    _end_logins(session, user)
    ownership.bury(session, user)
    session.delete(user)


def _end_logins(session: Session, user: User) -> None:
    """Revoke every API token and web session of ``user``: after a change of password or role,
    nothing issued before it keeps working."""
    session.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))


def set_password(session: Session, name: str, password: str) -> None:
    _check_password(password)
    user = get_user(session, name)
    user.password_hash = _hasher().hash(password)
    _end_logins(session, user)


def set_role(session: Session, name: str, role: Role) -> None:
    """A new role; a changed one ends the user's tokens and sessions."""
    user = get_user(session, name)
    if user.role != role.value:
        user.role = role.value
        _end_logins(session, user)


def set_group(session: Session, name: str, group: str | None) -> None:
    """Put the user in ``group``, or in none (``None``).  Effective on their next request: the
    group is read from here on each one, so leaving a group ends access to its objects at once.
    """
    user = get_user(session, name)
    user.group = validate_name(group, what="group name") if group is not None else None


def authenticate(session: Session, name: str, password: str) -> Principal | None:
    """The user if ``password`` is theirs, else None (same cost either way)."""
    from argon2.exceptions import InvalidHashError, VerificationError

    dummy = _dummy_hash()  # made (once) before the lookup, so even the first login costs the same
    user = session.scalar(select(User).where(User.name == name))
    try:
        _hasher().verify(user.password_hash if user else dummy, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _hasher().check_needs_rehash(user.password_hash):
        user.password_hash = _hasher().hash(password)
    return _principal(user)


# ------------------------------------------------------------------ API tokens
def create_token(session: Session, user_name: str, token_name: str) -> str:
    """A new API token for ``user_name``; returned once, only its hash is kept."""
    validate_name(token_name, what="token name")
    user = get_user(session, user_name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=token_name, token_hash=digest(token)))
    return token


def list_tokens(session: Session, user_name: str) -> list[ApiToken]:
    user = get_user(session, user_name)
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id)))


def revoke_token(session: Session, user_name: str, token_id: int) -> None:
    user = get_user(session, user_name)
    token = session.get(ApiToken, token_id)
    if token is None or token.user_id != user.id:
        raise NotFound(f"token {token_id} of user {user_name!r} does not exist")
    session.delete(token)


#: A token's ``last_used`` is rewritten at most this often: writing it on every request made each
#: API call a database write and commit (~1 ms of a ~5 ms GET /api/v1/vms at 100 VMs).
TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)


def principal_for_token(session: Session, token: str) -> Principal | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest(token)))
    if row is None:
        return None
    now = utcnow()
    if row.last_used is None or aware(row.last_used) <= now - TOKEN_TOUCH_INTERVAL:
        row.last_used = now
    user = session.get(User, row.user_id)
    return _principal(user) if user else None


# ------------------------------------------------------------------ web sessions
def open_web_session(session: Session, user: Principal, lifetime: timedelta) -> tuple[str, str]:
    """A new login: (cookie value, CSRF token)."""
    cookie = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            id_hash=digest(cookie),
            user_id=user.id,
            csrf_token=csrf,
            expires=utcnow() + lifetime,
        )
    )
    return cookie, csrf


def principal_for_cookie(session: Session, cookie: str) -> Principal | None:
    row = session.get(WebSession, digest(cookie))
    if row is None:
        return None
    if aware(row.expires) <= utcnow():
        session.delete(row)
        return None
    user = session.get(User, row.user_id)
    return _principal(user, row.csrf_token) if user else None


def close_web_session(session: Session, cookie: str) -> None:
    session.execute(delete(WebSession).where(WebSession.id_hash == digest(cookie)))
