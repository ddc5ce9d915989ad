"""What the REST API and web UI remember: users, API tokens, sessions, audit log, tasks, owners.

VM facts stay in libvirt (see docs/ARCHITECTURE.md); the database only holds who may do what and
what was done.  SQLite by default, any SQLAlchemy URL (PostgreSQL) by ``KVMGR_DB_URL``.
"""

from kvmgr.store.db import Store
from kvmgr.store.models import ROLES, AuditEntry, Role, Task, User

__all__ = ["ROLES", "AuditEntry", "Role", "Store", "Task", "User"]
