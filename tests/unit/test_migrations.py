"""The schema comes from Alembic revisions, and the revisions match the models exactly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from kvmgr import statedir
from kvmgr.api.settings import Settings
from kvmgr.store import migrate
from kvmgr.store.db import Store
from kvmgr.store.models import Base
from kvmgr.store.schema import load_all_models


def test_revisions_create_exactly_the_models(tmp_path: Path) -> None:
    """A model changed without a revision (or a revision that differs) fails here."""
    store = Store(f"sqlite:///{tmp_path / 'kvmgr.db'}")
    load_all_models()
    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_database_from_before_alembic_is_stamped_then_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    # A pre-Alembic kvmgr made every baseline table; later revisions alter some of them.
    with old.begin() as connection:
        command.upgrade(migrate._config(connection), migrate.BASELINE)
        connection.exec_driver_sql("DROP TABLE alembic_version")
        connection.exec_driver_sql(
            "INSERT INTO users (name, password_hash, role, created) "
            "VALUES ('ann', 'x', 'admin', '2026-01-01 00:00:00')"
        )
    old.dispose()
    store = Store(url)
    with store.engine.connect() as connection:
        assert migrate.current_revisions(connection) == migrate.head_revisions()
        assert connection.exec_driver_sql("SELECT name FROM users").scalars().all() == ["ann"]


def test_second_open_does_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kvmgr.db'}"
    Store(url).dispose()
    store = Store(url)
    assert "alembic_version" in inspect(store.engine).get_table_names()


def test_heads_read_from_the_files_are_alembics() -> None:
    """The open of a current store skips Alembic by reading the heads itself: they must agree."""
    assert migrate.head_revisions() == migrate.alembic_heads()
    assert migrate.BASELINE not in migrate.head_revisions()


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"KVMGR_STATE_DIR": "/srv/kvmgr"},
        {"kvmgr_state_dir": "/srv/lower"},
        {"KVMGR_DB_URL": "postgresql+psycopg://u@db/kvmgr", "KVMGR_STATE_DIR": "/srv/x"},
        {"KVMGR_DATABASE_URL": "postgresql+psycopg://u@db/fleet"},
    ],
)
def test_the_cli_finds_the_database_settings_would(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI reads the URL without pydantic (kvmgr.statedir); it must be Settings' URL."""
    for name in list(os.environ):
        if name.upper() in ("KVMGR_STATE_DIR", "KVMGR_DB_URL", "KVMGR_DATABASE_URL"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert statedir.url_from_environment() == Settings().database_url
    assert statedir.state_dir_from_environment() == Settings().state_dir
