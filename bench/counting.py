"""Counting the libvirt calls an operation makes, without touching kvmgr.

:class:`CountingConnection` stands in for a ``virConnect``: every method call is counted and
forwarded, and domains it returns are wrapped in :class:`CountingDomain`, which counts calls on
them too.  A few domain getters (``name``, ``UUIDString``...) only read the handle libvirt-python
already holds and make no call to the driver; they are counted apart as local.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import libvirt

# virDomain methods answered from the handle itself, with no round trip to the driver/daemon.
LOCAL_DOMAIN_METHODS = frozenset({"name", "UUID", "UUIDString", "ID", "connect"})


class CallLog:
    """Counts of calls by ``object.method``."""

    def __init__(self) -> None:
        self.remote: Counter[str] = Counter()
        self.local: Counter[str] = Counter()

    @property
    def remote_total(self) -> int:
        return sum(self.remote.values())

    def reset(self) -> None:
        self.remote.clear()
        self.local.clear()


def _wrap_result(value: Any, log: CallLog) -> Any:
    if isinstance(value, libvirt.virDomain):
        return CountingDomain(value, log)
    if isinstance(value, list):
        return [_wrap_result(item, log) for item in value]
    if isinstance(value, tuple):
        return tuple(_wrap_result(item, log) for item in value)
    return value


class _CountingProxy:
    _kind = "object"

    def __init__(self, target: Any, log: CallLog) -> None:
        self._target = target
        self._log = log

    def _is_local(self, name: str) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute
        counter = self._log.local if self._is_local(name) else self._log.remote
        key = f"{self._kind}.{name}"

        def counted(*args: Any, **kwargs: Any) -> Any:
            counter[key] += 1
            return _wrap_result(attribute(*args, **kwargs), self._log)

        return counted


class CountingConnection(_CountingProxy):
    _kind = "virConnect"


class CountingDomain(_CountingProxy):
    _kind = "virDomain"

    def _is_local(self, name: str) -> bool:
        return name in LOCAL_DOMAIN_METHODS
