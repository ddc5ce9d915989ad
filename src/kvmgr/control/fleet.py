"""Every VM of many hosts at once (``vm list --all-hosts``, ``GET /api/v1/vms?all_hosts=true``).

Kept apart from the registry so the CLI can list a fleet whose hosts it read with the standard
library (kvmgr.control.host_lookup), without importing SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvmgr.connect.bounded import Outcome, connect_uri, fan_out


def list_fleet(
    hosts: Sequence[tuple[str, str]], timeout: float, *, with_ips: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One bulk listing per (name, uri) host (:func:`kvmgr.services.vms.list_vms`), all hosts
    at once, each within ``timeout``.

    Returns (VM rows with their ``host``, rows of the hosts that did not answer: host, uri,
    error).  A host that is down or hangs costs the others nothing: its row says why.
    """
    from kvmgr.services import vms

    def listing(host: tuple[str, str]) -> list[dict[str, Any]]:
        conn = connect_uri(host[1], timeout)
        return [row.as_dict() for row in vms.list_vms(conn, with_ips=with_ips)]

    outcomes = fan_out(list(hosts), listing, timeout)
    rows: list[dict[str, Any]] = []
    down: list[dict[str, Any]] = []
    for (name, uri), outcome in zip(hosts, outcomes, strict=True):
        if outcome.ok and outcome.value is not None:
            rows.extend({"host": name, **row} for row in outcome.value)
        else:
            down.append({"host": name, "uri": uri, "error": reason(outcome)})
    return rows, down


def reason(outcome: Outcome[Any]) -> str:
    err = outcome.error
    return err.message if err is not None else "no answer"
