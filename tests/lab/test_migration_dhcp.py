"""A VM's DHCP reservation follows it to the destination host (kvmgr.services.migration_dhcp):
checked before the move, added there and removed from the source after it; a clashing
reservation on the destination refuses the move with the reason."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from kvmgr.connect import Connection
from kvmgr.host import lab as labs
from kvmgr.services import networks, storage
from kvmgr.units import MIB
from tests.lab.test_migration import POOL, _shut_off_domain
from tests.lab.test_moves import PREFIX, clean, kvmgr

__all__ = ["clean"]
NETWORK = "default"


def _reserved(conn: Connection) -> dict[str, str]:
    """mac -> ip of the default network's reservations."""
    model = networks._parse(conn.virconn.networkLookupByName(NETWORK), inactive=True)
    return {host.mac: host.ip for ip in model.ips for host in ip.dhcp_hosts if host.mac}


def test_a_reservation_moves_with_the_vm_and_a_clash_refuses(
    lab: labs.Lab, lab_tls: list[Connection], tmp_path: Path, clean: None
) -> None:
    state = tmp_path / "state"
    for index in (1, 2):
        added = kvmgr(state, "host", "add", f"h{index}", lab.tls_uri(lab.host(index)))
        assert added.returncode == 0, added.stderr
    src, dst = lab_tls[0], lab_tls[1]
    name = f"{PREFIX}dhcp"
    path = storage.create_volume(src, POOL, f"{name}.img", 4 * MIB, "raw").path
    src.virconn.defineXML(_shut_off_domain(src, name, [path], NETWORK).to_xml())
    subnet = ipaddress.ip_network(networks.network_info(src, NETWORK).subnet or "")
    address, other = str(subnet.network_address + 201), str(subnet.network_address + 202)
    mine = networks.reserve(src, NETWORK, address, vm=name)
    clash = networks.reserve(dst, NETWORK, address, mac="52:54:00:aa:bb:01")  # someone else's
    try:
        refused = kvmgr(state, "--host", "h1", "vm", "migrate", name, "--to", "h2", "--dry-run")
        assert refused.returncode == 1
        assert f"reservation {address} ({mine.mac}) on network 'default' clashes" in (
            refused.stdout + refused.stderr
        )
        networks.unreserve(dst, NETWORK, mac=clash.mac)
        networks.reserve(dst, NETWORK, other, mac=clash.mac)  # a neighbour that does not clash
        moved = kvmgr(state, "--host", "h1", "vm", "migrate", name, "--to", "h2", "--offline",
                      "-o", "json")  # fmt: skip
        assert moved.returncode == 0, moved.stderr
        assert json.loads(moved.stdout)["reservations_moved"] == [
            f"reservation {address} ({mine.mac}) on {NETWORK}"
        ]
        assert _reserved(dst).get(mine.mac) == address
        assert _reserved(dst).get(clash.mac) == other  # left as it was
        assert mine.mac not in _reserved(src)
    finally:
        for conn in (src, dst):
            for mac in list(_reserved(conn)):
                if mac in (mine.mac, clash.mac):
                    networks.unreserve(conn, NETWORK, mac=mac)
