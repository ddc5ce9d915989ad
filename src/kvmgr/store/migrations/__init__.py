"""Alembic migrations of the store; applied by :class:`kvmgr.store.db.Store` on open."""
