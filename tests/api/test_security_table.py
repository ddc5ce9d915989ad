"""docs/SECURITY.md's roles x objects x actions table, enforced route by route.

Every route of the app (enumerated from ``app.routes``) needs a row in the routes table, naming a
row of the matrix; a route added without one fails here.  Then each route is called as each role
and the answer compared with the matrix: ``no`` is a 403, anything else passes the role guard;
``own`` is a 403 for an operator on a VM they do not own (the test driver's own VM 'test').
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute

from kvmgr.store.models import Role
from tests.api.conftest import As, all_routes
from tests.api.test_route_refusals import min_role

SECURITY = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"
ROLES = ("viewer", "operator", "admin")
CALLER = {"viewer": "viewer", "operator": "op1", "admin": "admin"}
#: Routes never called with an allowed caller: an answer that streams until the client leaves.
STREAMS = {("GET", "/api/v1/events")}
FOREIGN_VM = "test"  # the test driver's VM: no owner record, so the admins'
#: A valid body (and path values) for every route whose operator cell is ``own``, so the request
#: reaches the ownership check instead of stopping at validation.
OWN_SAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/api/v1/vms/{name}/autostart"): {"json": {"enabled": True}},
    ("PATCH", "/api/v1/vms/{name}/resources"): {"json": {"vcpus": 1}},
    ("POST", "/api/v1/vms/{name}/disks"): {"json": {"size": "1G"}},
    ("DELETE", "/api/v1/vms/{name}/disks/{target}"): {},
    ("PATCH", "/api/v1/vms/{name}/disks/{target}"): {"json": {"size": "2G"}},
    ("POST", "/api/v1/vms/{name}/nics"): {"json": {"network": "default"}},
    ("DELETE", "/api/v1/vms/{name}/nics/{mac}"): {},
    ("DELETE", "/api/v1/vms/{name}"): {},
    ("POST", "/api/v1/vms/{name}/{action}"): {},
    ("POST", "/api/v1/vms/{name}/console-token"): {"json": {"kind": "serial"}},
    ("POST", "/api/v1/vms/{name}/snapshots"): {"json": {"name": "t-api-sec-snap"}},
    ("POST", "/api/v1/vms/{name}/snapshots/{snapshot}/revert"): {},
    ("DELETE", "/api/v1/vms/{name}/snapshots/{snapshot}"): {},
    ("POST", "/api/v1/vms/{name}/clone"): {"json": {"name": "t-api-sec-clone"}},
    ("POST", "/api/v1/vms/{name}/backups"): {"json": {}},
}
PATH_VALUES = {"target": "vda", "mac": "52:54:00:00:00:01", "action": "pause"}


def _table(marker: str) -> list[list[str]]:
    """The rows of the Markdown table after the ``<!-- marker`` comment."""
    lines = SECURITY.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"<!-- {marker}"))
    rows = []
    for line in lines[start + 3 :]:  # the comment, the header, the rule
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def matrix() -> dict[tuple[str, str], dict[str, str]]:
    return {(o, a): dict(zip(ROLES, cells, strict=True)) for o, a, *cells in _table("matrix")}


def route_rows() -> dict[tuple[str, str], tuple[str, str]]:
    rows: dict[tuple[str, str], tuple[str, str]] = {}
    for method, path, obj, action in _table("routes"):
        assert (method, path) not in rows, f"two rows for {method} {path}"
        rows[(method, path)] = (obj, action)
    return rows


def app_routes(app: FastAPI) -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {}
    for route in all_routes(app):
        if isinstance(route, APIRoute):
            for method in route.methods - {"HEAD"}:
                found[(method, route.path)] = route
        elif isinstance(route, APIWebSocketRoute):
            found[("WS", route.path)] = route
    return found


def concrete(path: str, name: str = "t-api-none") -> str:
    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        return name if key in ("name", "pool") else PATH_VALUES.get(key, "t-api-none")

    return re.sub(r"\{([^}]+)\}", value, path)


# ------------------------------------------------------------------ the tables themselves
def test_every_route_has_exactly_one_row_and_every_row_a_route(app: FastAPI) -> None:
    routes, rows = set(app_routes(app)), set(route_rows())
    assert sorted(routes - rows) == [], "routes without a row in docs/SECURITY.md"
    assert sorted(rows - routes) == [], "rows of docs/SECURITY.md without a route"
    assert len(rows) > 60


def test_every_row_names_a_matrix_row_with_known_cells() -> None:
    cells = matrix()
    for route, row in route_rows().items():
        assert row in cells, (route, row)
    for row, by_role in cells.items():
        assert set(by_role.values()) <= {"yes", "own", "no", "public"}, row
        # Roles only add rights: nothing a lower role may do is refused to a higher one.
        ranks = [by_role[role] != "no" for role in ROLES]
        assert ranks == sorted(ranks), row


def test_role_guards_are_the_tables(app: FastAPI) -> None:
    cells, routes = matrix(), app_routes(app)
    for (method, path), (obj, action) in route_rows().items():
        route = routes[(method, path)]
        by_role = cells[(obj, action)]
        if method == "WS":
            continue  # console tokens, checked below and in test_route_refusals
        guard = min_role(route)
        if by_role["viewer"] == "public" or path == "/metrics":
            # /metrics has its own check: a login, or KVMGR_METRICS_TOKEN.
            assert guard is None, (method, path)
            continue
        lowest = next(Role(role) for role in ROLES if by_role[role] != "no")
        assert guard == lowest, (method, path, guard, lowest)


# ------------------------------------------------------------------ behaviour per role
@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_what_the_table_says(
    app: FastAPI, as_user: dict[str, As], role: str
) -> None:
    cells, checked = matrix(), 0
    caller = as_user[CALLER[role]]
    for (method, path), row in route_rows().items():
        if method == "WS":
            continue
        cell = cells[row][role]
        if cell != "no" and (method, path) in STREAMS:
            continue
        if (method, path) == ("POST", "/api/v1/auth/login"):
            continue  # public; logging in is tested in test_auth
        answer = caller.request(method, concrete(path), json={}, follow_redirects=False)
        if cell == "no":
            assert answer.status_code == 403, (role, method, path, answer.status_code)
        else:
            assert answer.status_code not in (401, 403), (role, method, path, answer.text[:200])
        checked += 1
    assert checked > 50


def test_operators_are_refused_objects_they_do_not_own(as_user: dict[str, As]) -> None:
    cells, checked = matrix(), 0
    for (method, path), row in route_rows().items():
        if cells[row]["operator"] != "own" or method == "WS":
            continue
        assert (method, path) in OWN_SAMPLES, f"give {method} {path} a sample request here"
        answer = as_user["op1"].request(
            method, concrete(path, FOREIGN_VM), **OWN_SAMPLES[(method, path)]
        )
        assert answer.status_code == 403, (method, path, answer.status_code, answer.text[:200])
        assert "may not" in answer.json()["error"], (method, path)
        checked += 1
    assert checked == len(OWN_SAMPLES)


def test_own_routes_admit_the_owners_group_and_refuse_other_groups(
    app: FastAPI, as_user: dict[str, As]
) -> None:
    """Each ``own`` route on a VM op1 (team-a) made: op3 (team-b) is refused, op2 (team-a) passes
    the ownership check (the test driver may then refuse the work itself: 409, 501, ...)."""
    from tests.api.conftest import remove_vm
    from tests.api.test_vms import wait_task

    vm = "t-api-sec-owned"
    made = as_user["op1"].post(
        "/api/v1/vms",
        json={"name": vm, "graphics": "none", "start": False, "disks": ["none"],
              "networks": ["none"]},
    )  # fmt: skip
    assert made.status_code == 202, made.text
    assert wait_task(as_user["op1"], made.json()["id"])["state"] == "done"
    cells = matrix()
    own = [route for route, row in route_rows().items()
           if cells[row]["operator"] == "own" and route[0] != "WS"]  # fmt: skip
    own.sort(key=lambda route: route == ("DELETE", "/api/v1/vms/{name}"))  # the delete last
    try:
        for method, path in own:
            sample = OWN_SAMPLES[(method, path)]
            refused = as_user["op3"].request(method, concrete(path, vm), **sample)
            assert refused.status_code == 403, (method, path, refused.text[:200])
            allowed = as_user["op2"].request(method, concrete(path, vm), **sample)
            assert allowed.status_code not in (401, 403), (method, path, allowed.text[:200])
            if allowed.status_code == 202:  # a task: let it end before the next request
                wait_task(as_user["op2"], allowed.json()["id"])
    finally:
        remove_vm(vm)
        remove_vm("t-api-sec-clone")
