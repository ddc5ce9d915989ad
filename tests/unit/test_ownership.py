"""Issue 11 hole 2 and issue 12 item 3: ownership by user id, tombstones, clearable groups,
logins that end with a new password or role; and the migration of name-based vm_owners rows."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from kvmgr.cli.main import app as cli
from kvmgr.control import ownership
from kvmgr.store import users
from kvmgr.store.db import Store
from kvmgr.store.migrate import upgrade
from kvmgr.store.models import Role
from tests.api.test_postgres import pg_url  # noqa: F401 - the PostgreSQL fixture

PASSWORD = "long enough password"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'kvmgr.db'}")


def _user(
    store: Store, name: str, role: Role = Role.operator, group: str | None = None
) -> users.Principal:
    with store.session() as session:
        return users.create_user(session, name, PASSWORD, role, group)


def test_a_new_user_of_a_deleted_users_name_owns_nothing_of_theirs(store: Store) -> None:
    _user(store, "keep")
    ann = _user(store, "ann")  # the highest id: SQLite would hand it out again
    ownership.record_owner(store, "vm", "uuid-a", ann, label="ann-vm")
    with store.session() as session:
        users.delete_user(session, "ann")
    again = _user(store, "ann")
    assert again.id > ann.id
    assert not ownership.may_act(store, again, "vm", "uuid-a")
    owner = ownership.owner_of(store, "vm", "uuid-a")
    assert owner is not None and owner.owner_id == ann.id and owner.owner == "(deleted) ann"
    admin = _user(store, "root", Role.admin)
    assert ownership.may_act(store, admin, "vm", "uuid-a")  # admins still manage it


def test_groups_can_be_cleared_and_access_ends_with_them(store: Store) -> None:
    ann = _user(store, "ann", group="team-a")
    bob = _user(store, "bob", group="team-a")
    ownership.record_owner(store, "vm", "uuid-a", ann)
    assert ownership.may_act(store, bob, "vm", "uuid-a")
    with store.session() as session:
        users.set_group(session, "bob", None)
        bob_now = users.principal_for_token(session, users.create_token(session, "bob", "t"))
    assert bob_now is not None and bob_now.group is None
    assert not ownership.may_act(store, bob_now, "vm", "uuid-a")
    assert ownership.may_act(store, ann, "vm", "uuid-a")  # the owner keeps it by id


@pytest.mark.parametrize("change", ["password", "role", "delete"])
def test_password_role_or_deletion_ends_tokens_and_sessions(store: Store, change: str) -> None:
    ann = _user(store, "ann")
    with store.session() as session:
        token = users.create_token(session, "ann", "script")
        cookie, _csrf = users.open_web_session(session, ann, timedelta(hours=1))
    with store.session() as session:
        if change == "password":
            users.set_password(session, "ann", "another long password")
        elif change == "role":
            users.set_role(session, "ann", Role.viewer)
        else:
            users.delete_user(session, "ann")
    with store.session() as session:
        assert users.principal_for_token(session, token) is None
        assert users.principal_for_cookie(session, cookie) is None


def test_setting_the_same_role_keeps_logins(store: Store) -> None:
    _user(store, "ann")
    with store.session() as session:
        token = users.create_token(session, "ann", "script")
        users.set_role(session, "ann", Role.operator)
    with store.session() as session:
        assert users.principal_for_token(session, token) is not None


@pytest.mark.parametrize("args", [["--no-group"], ["--group", ""]])
def test_cli_clears_a_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("KVMGR_DB_URL", url)
    monkeypatch.setenv("KVMGR_STATE_DIR", str(tmp_path))
    store = Store(url)
    _user(store, "ann", group="team-a")
    result = CliRunner().invoke(cli, ["user", "set", "ann", *args])
    assert result.exit_code == 0, result.output
    with store.session() as session:
        assert users.get_user(session, "ann").group is None
    result = CliRunner().invoke(cli, ["user", "set", "ann", "--group", "team-b", "--role", "admin"])
    assert result.exit_code == 0, result.output
    with store.session() as session:
        assert users.get_user(session, "ann").group == "team-b"
        assert users.get_user(session, "ann").role == "admin"


@pytest.fixture(params=["sqlite", "postgresql"])
def old_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    url: str = request.getfixturevalue("pg_url")
    engine = create_engine(url)
    with engine.begin() as connection:  # the module's database is shared: start from nothing
        connection.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()
    return url


def test_migration_moves_vm_owners_to_ids_and_tombstones(old_db_url: str) -> None:
    """A database at the baseline with name-based rows: the owner who still exists keeps their
    VM by id; the one who is gone becomes a tombstone, which a new 'gone' user does not match."""
    from alembic import command

    from kvmgr.store.migrate import _config

    url = old_db_url
    engine = create_engine(url)
    with engine.begin() as connection:
        config = _config(connection)
        command.upgrade(config, "0001_baseline")
        connection.execute(
            text(
                "INSERT INTO users (id, name, password_hash, role, created) "
                "VALUES (1, 'ann', 'x', 'operator', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                'INSERT INTO vm_owners (uuid, name, owner, "group") VALUES '
                "('u-ann', 'vm-ann', 'ann', 'team-a'), ('u-gone', 'vm-gone', 'gone', NULL)"
            )
        )
    upgrade(engine)
    engine.dispose()
    store = Store(url)
    try:
        ann = ownership.owner_of(store, "vm", "u-ann")
        gone = ownership.owner_of(store, "vm", "u-gone")
        assert ann is not None and (ann.owner_id, ann.owner, ann.group) == (1, "ann", "team-a")
        assert gone is not None and gone.owner == "(deleted) gone" and gone.owner_id == 2
        newcomer = _user(store, "gone")
        assert newcomer.id == 3
        assert not ownership.may_act(store, newcomer, "vm", "u-gone")
    finally:
        store.dispose()
