"""Issue 11 hole 1: every object a request names as an input is authorised like the VM itself.

The exact reproductions of the issue (on libvirt's test driver, so they run in a second):
``disks: ["path=/etc/shadow"]``, ``iso: "/etc/shadow"``, a symlink into /etc, ``..``, another
group's volume, a template's base image; plus pools on system directories and bare bridges.
Each of these was accepted before kvmgr.control.authz.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from fastapi import FastAPI

from kvmgr.control import ownership
from kvmgr.store import users
from tests.api.conftest import TEST_URI, As, remove_vm
from tests.api.test_vms import wait_task

POOL = "default-pool"  # the test driver's pool, at /default-pool
VM = "t-api-trust-op1"  # op1's (group team-a)


def _create(caller: As, **fields: Any) -> Any:
    body = {"name": "t-api-trust-new", "graphics": "none", "start": False, **fields}
    return caller.post("/api/v1/vms", json=body)


@pytest.fixture(scope="module")
def libvirt_conn() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(TEST_URI)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def op1_vm(as_user: dict[str, As]) -> Iterator[str]:
    try:
        answer = _create(as_user["op1"], name=VM, disks=["none"], networks=["none"])
        assert answer.status_code == 202, answer.text
        assert wait_task(as_user["op1"], answer.json()["id"])["state"] == "done"
        yield VM
    finally:
        remove_vm(VM)


@pytest.fixture
def volume(libvirt_conn: libvirt.virConnect) -> Iterator[str]:
    """A free volume of the test pool; its path."""
    pool = libvirt_conn.storagePoolLookupByName(POOL)
    vol = pool.createXML(
        "<volume><name>t-api-trust.img</name><capacity>1048576</capacity></volume>", 0
    )
    try:
        yield str(vol.path())
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            vol.delete(0)


def _host(app: FastAPI) -> str:
    """The host name the app records ownership under (its URI's registered host)."""
    return str(app.state.ctx.host_name())


def _principal(app: FastAPI, name: str) -> users.Principal:
    with app.state.ctx.store.session() as session:
        user = users.get_user(session, name)
        return users.Principal(user.id, user.name, user.role_enum, user.group)


def _no_task_for(caller: As, name: str) -> bool:
    return all(task["target"] != name for task in caller.get("/api/v1/tasks").json())


# ------------------------------------------------------------------ host files as inputs
def test_operator_may_not_make_a_host_file_a_disk(as_user: dict[str, As]) -> None:
    refused = _create(as_user["op1"], disks=["path=/etc/shadow"])
    assert refused.status_code == 403, refused.text
    assert "host path" in refused.json()["error"]
    assert _no_task_for(as_user["admin"], "t-api-trust-new")


def test_operator_may_not_boot_a_host_file_as_iso(as_user: dict[str, As]) -> None:
    refused = _create(as_user["op1"], iso="/etc/shadow", disks=["none"])
    assert refused.status_code == 403, refused.text
    assert "ISO library" in refused.json()["error"]


def test_admin_paths_are_resolved_before_the_check(as_user: dict[str, As], tmp_path: Path) -> None:
    link = tmp_path / "innocent.img"
    link.symlink_to("/etc/shadow")
    for disk in (str(link), f"{tmp_path}/../../../../../etc/shadow", "/etc/shadow"):
        refused = _create(as_user["admin"], disks=[f"path={disk}"])
        assert refused.status_code == 403, (disk, refused.text)
        assert "/etc" in refused.json()["error"]
    iso_link = tmp_path / "cd.iso"
    iso_link.symlink_to("/etc/shadow")
    refused = _create(as_user["admin"], iso=str(iso_link), disks=["none"])
    assert refused.status_code == 403 and "resolves to /etc/shadow" in refused.json()["error"]
    # The operator's symlink is refused too: it is no volume, whatever it points at.
    assert _create(as_user["op1"], disks=[f"path={link}"]).status_code == 403


def test_operator_may_not_attach_a_host_file_to_an_own_vm(
    as_user: dict[str, As], op1_vm: str
) -> None:
    refused = as_user["op1"].post(f"/api/v1/vms/{op1_vm}/disks", json={"path": "/etc/shadow"})
    assert refused.status_code == 403, refused.text


# ------------------------------------------------------------------ volumes
def test_another_groups_volume_is_refused_a_free_one_is_taken(
    app: FastAPI, as_user: dict[str, As], op1_vm: str, volume: str
) -> None:
    store = app.state.ctx.store
    ownership.record_owner(
        store, "volume", volume, _principal(app, "op3"), host=_host(app)
    )  # team-b's
    refused = as_user["op1"].post(f"/api/v1/vms/{op1_vm}/disks", json={"path": volume})
    assert refused.status_code == 403 and "another user or group" in refused.json()["error"]
    ownership.forget_owner(store, "volume", volume, host=_host(app))  # now free: op1 may take it
    name = "t-api-trust-taker"
    try:
        taken = _create(as_user["op1"], name=name, disks=[f"path={volume}"], networks=["none"])
        assert taken.status_code == 202, taken.text
        assert wait_task(as_user["op1"], taken.json()["id"])["state"] == "done"
        owner = ownership.owner_of(store, "volume", volume, host=_host(app))
        assert owner is not None and owner.owner == "op1" and owner.group == "team-a"
        # op3 (team-b) may not take it for a VM of their own now.
        refused = _create(as_user["op3"], disks=[f"path={volume}"], networks=["none"])
        assert refused.status_code == 403
        refused = as_user["op3"].post(f"/api/v1/vms/{op1_vm}/disks", json={"path": volume})
        assert refused.status_code == 403  # nor attach to op1's VM (not theirs to act on)
    finally:
        remove_vm(name)
        ownership.forget_owner(store, "volume", volume, host=_host(app))


def test_a_template_base_image_is_never_attached(
    app: FastAPI,
    as_user: dict[str, As],
    op1_vm: str,
    volume: str,
    libvirt_conn: libvirt.virConnect,
) -> None:
    from kvmgr.connect import open_connection
    from kvmgr.services import clones

    template = "t-api-trust-tmpl"
    libvirt_conn.defineXML(
        f"""<domain type='test'><name>{template}</name><memory unit='MiB'>64</memory>
        <os><type>hvm</type></os><devices><disk type='file' device='disk'>
        <source file='{volume}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""
    )
    try:
        with open_connection(TEST_URI) as conn:
            clones.mark_template(conn, template)
        # Even owning the template's disk does not let op1 write it.
        ownership.record_owner(
            app.state.ctx.store, "volume", volume, _principal(app, "op1"), host=_host(app)
        )
        for caller in ("op1", "admin"):
            refused = as_user[caller].post(f"/api/v1/vms/{op1_vm}/disks", json={"path": volume})
            assert refused.status_code == 403, (caller, refused.text)
            assert "template" in refused.json()["error"]
    finally:
        ownership.forget_owner(app.state.ctx.store, "volume", volume, host=_host(app))
        remove_vm(template)


def test_operator_disks_only_in_pools_they_may_use(app: FastAPI, as_user: dict[str, As]) -> None:
    store = app.state.ctx.store
    ownership.record_owner(
        store, "pool", POOL, _principal(app, "admin"), group="team-b", host=_host(app)
    )
    try:
        refused = _create(as_user["op1"], disks=[f"pool={POOL},size=1M"], networks=["none"])
        assert refused.status_code == 403 and "team-b" in refused.json()["error"]
        refused = _create(as_user["op1"], disks=["pool=kvmgr-isos,size=1M"], networks=["none"])
        assert refused.status_code == 403
    finally:
        ownership.forget_owner(store, "pool", POOL, host=_host(app))


# ------------------------------------------------------------------ networks and bridges
def test_operator_may_not_plug_into_a_bare_host_bridge(as_user: dict[str, As], op1_vm: str) -> None:
    refused = as_user["op1"].post(f"/api/v1/vms/{op1_vm}/nics", json={"bridge": "br0"})
    assert refused.status_code == 403 and "host bridge" in refused.json()["error"]
    refused = _create(as_user["op1"], disks=["none"], networks=["bridge=br0"])
    assert refused.status_code == 403


def test_a_group_network_serves_only_its_group(
    app: FastAPI, as_user: dict[str, As], op1_vm: str
) -> None:
    store = app.state.ctx.store
    ownership.record_owner(
        store, "network", "default", _principal(app, "admin"), group="team-b", host=_host(app)
    )
    try:
        refused = as_user["op1"].post(f"/api/v1/vms/{op1_vm}/nics", json={"network": "default"})
        assert refused.status_code == 403 and "team-b" in refused.json()["error"]
    finally:
        ownership.forget_owner(store, "network", "default", host=_host(app))


# ------------------------------------------------------------------ pools
@pytest.mark.parametrize(
    "path", ["/", "/etc", "/etc/kvmgr-pool", "/usr/lib", "/boot", "/proc", "/sys", "/dev",
             "/run/x", "/var/lib/kvmgr", "/var/lib/kvmgr/db", "/var", "/home", "/tmp",
             "/tmp/../etc"],
)  # fmt: skip
def test_no_pool_on_a_system_directory(as_user: dict[str, As], path: str) -> None:
    refused = as_user["admin"].post("/api/v1/pools", json={"name": "t-api-trust-p", "path": path})
    assert refused.status_code == 422, (path, refused.text)
    assert "system directory" in refused.json()["error"]


def test_no_pool_through_a_symlink_into_etc(as_user: dict[str, As], tmp_path: Path) -> None:
    link = tmp_path / "pool-link"
    link.symlink_to("/etc")
    refused = as_user["admin"].post(
        "/api/v1/pools", json={"name": "t-api-trust-p", "path": str(link)}
    )
    assert refused.status_code == 422 and "resolves to /etc" in refused.json()["error"]


def test_no_pool_in_the_state_dir(app: FastAPI, as_user: dict[str, As]) -> None:
    state = app.state.ctx.settings.state_dir
    for path in (str(state), f"{state}/db", f"{state}/db/x", f"{state}/secret_key"):
        refused = as_user["admin"].post(
            "/api/v1/pools", json={"name": "t-api-trust-p", "path": path}
        )
        assert refused.status_code == 422, (path, refused.text)
    # ... and the database is no disk, not even an admin's.
    refused = _create(as_user["admin"], disks=[f"path={state}/db/kvmgr.db"])
    assert refused.status_code == 403 and "system directory" in refused.json()["error"]


def test_no_system_file_is_imported_into_the_iso_library(
    as_user: dict[str, As], tmp_path: Path
) -> None:
    """An imported file becomes bootable by every operator: never /etc/shadow, by any name."""
    link = tmp_path / "setup.iso"
    link.symlink_to("/etc/shadow")
    for path in ("/etc/shadow", str(link), f"{tmp_path}/../../../../etc/shadow"):
        refused = as_user["admin"].post("/api/v1/isos", json={"path": path, "name": "t-api-x"})
        assert refused.status_code == 403 and "/etc" in refused.json()["error"], path
    assert _no_task_for(as_user["admin"], "t-api-x")


def test_a_volume_record_does_not_outweigh_the_vm_using_it(
    app: FastAPI, as_user: dict[str, As], op1_vm: str, volume: str, libvirt_conn: libvirt.virConnect
) -> None:
    """A stale record (the VM deleted outside the API, the path reused by an admin's VM) gives
    op1 no right to a disk an admin's VM uses."""
    other = "t-api-trust-admins"
    libvirt_conn.defineXML(
        f"""<domain type='test'><name>{other}</name><memory unit='MiB'>64</memory>
        <os><type>hvm</type></os><devices><disk type='file' device='disk'>
        <source file='{volume}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""
    )
    store = app.state.ctx.store
    try:
        ownership.record_owner(store, "volume", volume, _principal(app, "op1"), host=_host(app))
        refused = as_user["op1"].post(f"/api/v1/vms/{op1_vm}/disks", json={"path": volume})
        assert refused.status_code == 403 and other in refused.json()["error"]
    finally:
        ownership.forget_owner(store, "volume", volume, host=_host(app))
        remove_vm(other)


def test_api_paths_must_be_absolute(as_user: dict[str, As]) -> None:
    """An API client has no working directory: a relative path is a 422, never the server's."""
    refused = _create(as_user["admin"], disks=["path=../../etc/shadow"])
    assert refused.status_code == 422 and "absolute" in refused.json()["error"]


# ------------------------------------------------------------------ users through the API
def test_api_clears_a_group_and_a_new_password_ends_tokens(
    app: FastAPI, as_user: dict[str, As]
) -> None:
    admin = as_user["admin"]
    made = admin.post(
        "/api/v1/users",
        json={"name": "t-api-trust-u", "password": "a long password", "role": "operator",
              "group": "team-a"},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    try:
        with app.state.ctx.store.session() as session:
            token = users.create_token(session, "t-api-trust-u", "script")
        me = As(admin.client, token)
        assert me.get("/api/v1/auth/me").json()["group"] == "team-a"
        cleared = admin.request("PATCH", "/api/v1/users/t-api-trust-u", json={"group": None})
        assert cleared.status_code == 200 and cleared.json()["group"] is None
        assert me.get("/api/v1/auth/me").json()["group"] is None  # a group change keeps logins
        renamed = admin.request("PATCH", "/api/v1/users/t-api-trust-u", json={"role": "operator"})
        assert renamed.json()["group"] is None  # a PATCH without "group" leaves it
        admin.request("PATCH", "/api/v1/users/t-api-trust-u", json={"password": "another long one"})
        assert me.get("/api/v1/auth/me").status_code == 401
    finally:
        admin.delete("/api/v1/users/t-api-trust-u")
