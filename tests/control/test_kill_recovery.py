"""A worker killed with SIGKILL in the middle of a journaled task, on the real daemon: the next
worker runs the journal's recovery (the volume the task made is deleted) and marks the task
interrupted; the task is not run again."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

import tests.control.worker_proc  # noqa: F401  - registers the test kinds for submit()
from kvmgr.connect import Connection, open_connection
from kvmgr.control import tasks
from kvmgr.control.worker import Worker
from kvmgr.store.db import Store
from tests.control.conftest import WorkerProcesses, principals, wait_for

pytestmark = pytest.mark.integration
URI = "qemu:///system"
POOL = "t-tasks-pool"


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Connection]:
    directory = tmp_path / "pool"
    directory.mkdir()
    conn = open_connection(URI)
    xml = f"<pool type='dir'><name>{POOL}</name><target><path>{directory}</path></target></pool>"
    made = conn.virconn.storagePoolCreateXML(xml, 0)  # transient: gone when destroyed
    try:
        yield conn
    finally:
        for vol in made.listAllVolumes():
            vol.delete(0)
        made.destroy()
        conn.close()


def _volumes(conn: Connection) -> list[str]:
    pool = conn.virconn.storagePoolLookupByName(POOL)
    pool.refresh(0)
    return [vol.name() for vol in pool.listAllVolumes()]


def test_a_journaled_task_killed_mid_way_is_undone_and_interrupted(
    store: Store, tmp_path: Path, worker_procs: WorkerProcesses, pool: Connection
) -> None:
    people = principals(store)
    proc, _worker = worker_procs.start(store.url, threads=1, uri=URI)
    started = tmp_path / "started"
    params = {"pool": POOL, "name": "t-tasks-vol", "started": str(started), "seconds": 120}
    task = tasks.submit(store, "test.journaled", params, owner=people["ann"], target="t-tasks-vol")
    wait_for(started.exists, 60, "the task to make its volume")
    assert _volumes(pool) == ["t-tasks-vol"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)

    survivor = Worker(store, lambda _host: pool)
    assert survivor.housekeep() == [task["id"]]
    assert _volumes(pool) == []  # the journal's undo ran
    with store.session() as session:
        row = tasks.get_task(session, people["ann"], task["id"])
        assert row.state == "interrupted" and row.attempts == 1
        assert "test.journaled t-tasks-vol" in (row.error or "")  # what recovery did, said
    assert tasks.claim(store, survivor.id) is None
    with pytest.raises(libvirt.libvirtError):
        pool.virconn.storagePoolLookupByName(POOL).storageVolLookupByName("t-tasks-vol")
