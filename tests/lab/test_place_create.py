"""``kvmgr vm create --host auto`` in the lab: placement picks the host by labels, maintenance
and anti-affinity, says why (``--explain``), and the VM is made on the host it chose."""

from __future__ import annotations

import uuid
from pathlib import Path

import libvirt
import pytest

from kvmgr.connect import Connection
from kvmgr.host import lab as labs
from tests.lab.test_moves import PREFIX, clean, kvmgr, register_zoned_hosts

# The lab hosts share kvmgr's ISO directory: a name of this run's, never a leftover's.
ISO = f"{PREFIX}{uuid.uuid4().hex[:8]}.iso"
__all__ = ["clean"]  # the fixture that removes this module's VMs from every lab host


def test_create_goes_where_placement_says(
    lab: labs.Lab, lab_tls: list[Connection], demo_iso: Path, tmp_path: Path, clean: None
) -> None:
    state = tmp_path / "state"
    register_zoned_hosts(lab, state)
    imported = kvmgr(state, "--host", "h2", "iso", "import", str(demo_iso), "--name", ISO)
    assert imported.returncode == 0, imported.stderr
    try:
        _create_two(state, lab_tls)
    finally:
        kvmgr(state, "--host", "h2", "vm", "delete", f"{PREFIX}auto1", "--force")
        gone = kvmgr(state, "--host", "h2", "iso", "delete", ISO)
        assert gone.returncode == 0, gone.stderr


def _create_two(state: Path, lab_tls: list[Connection]) -> None:
    first, second = f"{PREFIX}auto1", f"{PREFIX}auto2"
    create = ("vm", "create", "--iso", ISO, "--disk", "none", "--memory", "128M",
              "--no-start", "--require", "zone=b", "--group", "web", "--anti-affinity")  # fmt: skip
    made = kvmgr(state, "--host", "auto", *create[:2], first, *create[2:], "--explain")
    assert made.returncode == 0, made.stderr
    assert "placed on host h2" in made.stderr
    assert "needs label zone=b, has zone=c" in made.stdout and "in maintenance" in made.stdout
    dom = lab_tls[1].virconn.lookupByName(first)  # on h2, and nowhere else
    for other in (lab_tls[0], lab_tls[2]):
        with pytest.raises(libvirt.libvirtError):
            other.virconn.lookupByName(first)
    assert "kvmgr-placement" in dom.XMLDesc(0)  # its group went into its definition
    # The only other zone=b host is in maintenance and h2 holds a member of the group.
    refused = kvmgr(state, "--host", "auto", *create[:2], second, *create[2:])
    assert refused.returncode == 1
    assert f"anti-affinity group web: {first} is there" in refused.stderr
    for conn in lab_tls:
        with pytest.raises(libvirt.libvirtError):
            conn.virconn.lookupByName(second)
    deleted = kvmgr(state, "--host", "h2", "vm", "delete", first)
    assert deleted.returncode == 0, deleted.stderr
