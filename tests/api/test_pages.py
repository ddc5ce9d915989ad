"""The management pages as the server renders them (test driver): admins get the forms and the
type-the-name dialog, viewers none of them (the API refuses them anyway), and the nav marks the
page being shown."""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import As

ADMIN_CONTROLS = {
    "/networks": ["net-form", "res-form", "<th>Actions</th>"],
    "/storage": ["pool-form", "vol-form", "<th>Actions</th>"],
    "/isos": ["iso-form", "iso-progress", "<th>Actions</th>"],
}


def _current_nav(html: str) -> list[str]:
    return re.findall(r'<a href="([^"]+)" class="current" aria-current="page">', html)


@pytest.mark.parametrize("path", sorted(ADMIN_CONTROLS))
def test_admin_sees_the_forms_and_a_viewer_none(path: str, as_user: dict[str, As]) -> None:
    admin = as_user["admin"].get(path)
    viewer = as_user["viewer"].get(path)
    assert admin.status_code == viewer.status_code == 200
    for marker in ADMIN_CONTROLS[path]:
        assert marker in admin.text, marker
        assert marker not in viewer.text, marker
    assert 'data-admin="true"' in admin.text and 'data-admin="false"' in viewer.text


@pytest.mark.parametrize(
    ("path", "user"),
    [
        ("/", "viewer"),
        ("/networks", "viewer"),
        ("/storage", "op1"),
        ("/isos", "viewer"),
        ("/tasks", "viewer"),
        ("/users", "admin"),
        ("/audit", "admin"),
        ("/vms/new", "op1"),
    ],
)
def test_nav_marks_exactly_the_current_page(path: str, user: str, as_user: dict[str, As]) -> None:
    html = as_user[user].get(path).text
    assert _current_nav(html) == [path]


def test_users_page_is_admin_only(as_user: dict[str, As]) -> None:
    assert as_user["op1"].get("/users").status_code == 403
    assert "user-form" in as_user["admin"].get("/users").text


def test_only_admins_get_migrate_and_evacuate(as_user: dict[str, As]) -> None:
    """Moving VMs is the admins' (the API says so: 403 for anyone else); an operator who may
    power the VM gets no Migrate card, and nobody but an admin gets migrate.js at all."""
    for user, sees in (("admin", True), ("op1", False), ("viewer", False)):
        vm_page = as_user[user].get("/vms/test").text
        hosts_page = as_user[user].get("/hosts").text
        assert ('id="migrate-card"' in vm_page) is sees, user
        assert ('id="evacuate-card"' in hosts_page) is sees, user
        assert ("/static/migrate.js" in vm_page + hosts_page) is sees, user
    # the bound and the default are the control plane's (kvmgr.control.move_limits)
    assert 'min="1" max="8" value="2"' in as_user["admin"].get("/hosts").text
    refused = as_user["op1"].post("/api/v1/hosts/any/evacuate", json={"dry_run": True})
    assert refused.status_code == 403
    too_many = as_user["admin"].post("/api/v1/hosts/any/evacuate", json={"parallel": 9})
    assert too_many.status_code == 422
