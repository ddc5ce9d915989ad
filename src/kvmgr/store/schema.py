"""Every module that defines tables, so Alembic and the tests see the whole schema.

A module that adds tables (they all derive from :class:`kvmgr.store.models.Base`) is listed here
and gets a revision in ``kvmgr/store/migrations/versions``.
"""

from __future__ import annotations

import importlib

#: Modules whose import registers tables on ``Base.metadata``.
MODEL_MODULES: tuple[str, ...] = (
    "kvmgr.store.models",
    "kvmgr.control.models",
    "kvmgr.control.backup_models",
    "kvmgr.control.backup_schedule_models",
    "kvmgr.store.ownership",
    "kvmgr.control.host_models",
    "kvmgr.control.event_models",
    "kvmgr.control.task_secrets",
)


def load_all_models() -> None:
    for module in MODEL_MODULES:
        importlib.import_module(module)
