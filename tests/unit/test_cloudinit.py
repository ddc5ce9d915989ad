"""NoCloud seeds: user-data valid for cloud-init, network-config matched by MAC, the ISO."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml

from kvmgr.crypt import sha512_crypt
from kvmgr.errors import InvalidInput
from kvmgr.services.cloudinit import CloudInitRequest, build_seed, check_network_config
from kvmgr.services.cloudinit import network_config as make_network_config

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl t@kvmgr"
MACS = ["52:54:00:12:34:56", "52:54:00:ab:cd:ef"]


def _schema(tmp_path: Path, text: str) -> None:
    if not shutil.which("cloud-init"):
        pytest.skip("needs Debian's cloud-init (scripts/install-system-deps.sh installs it)")
    path = tmp_path / "user-data"
    path.write_text(text)
    done = subprocess.run(
        ["cloud-init", "schema", "-c", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_user_data_is_valid_cloud_config_with_only_a_hash(tmp_path: Path) -> None:
    hashed = sha512_crypt("pw-in-clear")
    request = CloudInitRequest(user="alice", password_hash=hashed, ssh_keys=[KEY], hostname="h1")
    seed = build_seed(request, instance_id="i-1", vm_name="vm1", macs=MACS)
    data = yaml.safe_load(seed.user_data)
    assert seed.user_data.startswith("#cloud-config\n")
    assert data["users"][1]["passwd"] == hashed and "pw-in-clear" not in seed.user_data
    assert data["users"][1]["ssh_authorized_keys"] == [KEY]
    assert yaml.safe_load(seed.meta_data) == {"instance-id": "i-1", "local-hostname": "h1"}
    _schema(tmp_path, seed.user_data)


def test_a_users_cloud_config_is_merged_and_stays_valid(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        "#cloud-config\npackages: [nginx]\nruncmd: [[touch, /ok]]\n"
        "ssh_authorized_keys: [ssh-rsa AAAAB3Nza other]\n"
    )
    request = CloudInitRequest(ssh_keys=[KEY], user_data_file=str(tmp_path / "mine.yaml"))
    seed = build_seed(request, instance_id="i-2", vm_name="vm2", macs=MACS[:1])
    data = yaml.safe_load(seed.user_data)
    assert data["packages"] == ["nginx"] and data["runcmd"] == [["touch", "/ok"]]
    assert data["ssh_authorized_keys"] == ["ssh-rsa AAAAB3Nza other", KEY]
    assert data["hostname"] == "vm2"
    _schema(tmp_path, seed.user_data)
    (tmp_path / "script.sh").write_text("#!/bin/sh\necho hi\n")
    mixed = build_seed(
        CloudInitRequest(ssh_keys=[KEY], user_data_file=str(tmp_path / "script.sh")),
        instance_id="i-3",
        vm_name="vm3",
        macs=MACS[:1],
    )
    assert "multipart/mixed" in mixed.user_data and "text/x-shellscript" in mixed.user_data


def test_network_config_matches_each_nic_by_mac(tmp_path: Path) -> None:
    default = yaml.safe_load(make_network_config(MACS))
    assert default["version"] == 2
    assert [e["match"]["macaddress"] for e in default["ethernets"].values()] == MACS
    assert all(e["dhcp4"] is True and e["set-name"] for e in default["ethernets"].values())
    theirs = (
        "version: 2\nethernets:\n  lan:\n    addresses: [10.0.0.5/24]\n    gateway4: 10.0.0.1\n"
    )
    given = yaml.safe_load(make_network_config(MACS, user_text=theirs))
    assert given["ethernets"]["lan"]["match"] == {"macaddress": MACS[0]}
    assert given["ethernets"]["lan"]["set-name"] == "lan"
    check_network_config(given, "x", macs=MACS)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("version: 1\n", "version: 2"),
        ("version: 2\nethernets:\n  a: {addresses: [10.0.0.5]}\n", "prefix length"),
        ("version: 2\nethernets:\n  a: {addresses: [nonsense/24]}\n", "not an address"),
        ("version: 2\nethernets:\n  a: {dhcp4: maybe}\n", "true or false"),
        ("version: 2\nethernets:\n  a: {match: {macaddress: '52:54:00:00:00:99'}}\n", "no NIC"),
        ("version: 2\nethernets: {a: {}, b: {}, c: {}}\n", "3 ethernets"),
        ("version: 2\nwifis: {}\n", "unknown keys"),
    ],
)
def test_bad_network_config_is_refused(text: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        make_network_config(MACS, user_text=text)


def test_seed_iso_is_labelled_cidata_and_holds_the_three_files() -> None:
    seed = build_seed(CloudInitRequest(), instance_id="i-4", vm_name="vm4", macs=MACS[:1])
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(seed.iso))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        for name, text in (("meta-data", seed.meta_data), ("user-data", seed.user_data)):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            assert out.getvalue().decode() == text
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/network-config")
        assert out.getvalue().decode() == seed.network_config
    finally:
        iso.close()
