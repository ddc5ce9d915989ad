"""The control plane: the one layer that holds the database.

Faces (CLI, API, web) go through :class:`kvmgr.control.plane.ControlPlane`, which takes leases,
journals multi-step operations and recovers what a dead process left; the host registry
(:mod:`kvmgr.control.hosts`) says which daemons it manages.  Services below never see
the database: they get a :class:`kvmgr.services.steps.Steps`.
"""
