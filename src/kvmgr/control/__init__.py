"""The control plane: the one layer that holds the database.

Faces (CLI, API, web) go through :class:`kvmgr.control.plane.ControlPlane`, which takes leases,
journals multi-step operations and recovers what a dead process left.  Services below never see
the database: they get a :class:`kvmgr.services.steps.Steps`.  Long operations are tasks in
the database queue (:mod:`kvmgr.control.tasks`), run by workers (:mod:`kvmgr.control.worker`).
"""
