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
