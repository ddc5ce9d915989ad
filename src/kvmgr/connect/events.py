"""libvirt's event loop, run once per process in a daemon thread.

Without a registered event loop the remote driver reads its socket only while a call is in
flight, so a non-blocking stream (a VM console) sees no guest output until the program happens to
make some other call, and domain events never arrive.  Registering libvirt's default
implementation before a connection opens, and running it in a thread, fixes both; it also lets
libvirt's keepalive notice a daemon that went away.
"""

from __future__ import annotations

import logging
import threading

import libvirt

log = logging.getLogger(__name__)

_lock = threading.Lock()
_started = False


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it (idempotent, thread-safe).

    Must run before a connection is opened for that connection to use it, so
    :func:`kvmgr.connect.open_connection` calls it.
    """
    global _started  # noqa: PLW0603 - libvirt's event loop is process-wide by design
    with _lock:
        if _started:
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run, name="libvirt-events", daemon=True).start()
        _started = True


def event_loop_running() -> bool:
    return _started


def _run() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:
            log.exception("libvirt event loop iteration failed")
