"""How many moves of one evacuation run at once: numbers the CLI's options, the API's request
model and :mod:`kvmgr.control.moves` share (a module of its own so that the CLI can name them
without importing the control plane's database layer at start-up)."""

from __future__ import annotations

#: Moves of one evacuation in flight at once unless told otherwise.  Each live move is a disk
#: mirror plus a memory stream over the same source link and disks: two keep the link busy
#: while one waits on its switch-over; more split the bandwidth so thin that a guest's dirty
#: pages outrun its share and the move never converges (the downtime raise then only delays).
EVACUATE_PARALLEL = 2
#: The most the CLI and the API accept: every move also holds a QEMU on the destination and a
#: libvirt job on both daemons, and dozens in flight from one source is a denial of service.
EVACUATE_PARALLEL_MAX = 8
