"""The KVM probe cache: keyed on what the probe depends on, negative answers expire (issue 11).

No real probe runs here: a fake probe counts its calls; /proc, /sys, the device node and the cache
file all live under ``tmp_path``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kvmgr.connect import kvm_probe
from kvmgr.connect.kvm_probe import NEGATIVE_TTL, ProbeResult, cached_probe
from kvmgr.host.check_runner import CheckContext

BOOT_ID = "0b1c2d3e-0000-4000-8000-000000000001"


@dataclass
class FakeProbe:
    usable: bool = False
    calls: list[str] = field(default_factory=list)

    def __call__(self, device: str, timeout: float) -> ProbeResult:
        self.calls.append(device)
        reason = "guest code ran" if self.usable else "guest code did not finish"
        return ProbeResult(self.usable, reason, 0.01, device)


@dataclass
class Host:
    """A fake /proc, /sys and /dev/kvm under tmp_path, plus a settable clock."""

    root: Path
    now: float = 1_000_000.0

    @property
    def proc(self) -> Path:
        return self.root / "proc"

    @property
    def sys_dir(self) -> Path:
        return self.root / "sys"

    @property
    def device(self) -> str:
        return str(self.root / "dev" / "kvm")

    @property
    def cache(self) -> Path:
        return self.root / "cache" / "kvm-probe.json"

    def set_modules(self, modules: dict[str, str]) -> None:
        """Loaded modules as name -> value of their ``nested`` parameter."""
        lines = [f"{name} 1400000 0 - Live 0x0000000000000000" for name in modules]
        (self.proc / "modules").write_text("\n".join(["ext4 1000 1 - Live 0x0", *lines]) + "\n")
        for name, nested in modules.items():
            params = self.sys_dir / "module" / name / "parameters"
            params.mkdir(parents=True, exist_ok=True)
            (params / "nested").write_text(nested + "\n")

    def clock(self) -> float:
        return self.now

    def probe(self, fake: FakeProbe, *, refresh: bool = False) -> ProbeResult:
        return cached_probe(
            refresh=refresh,
            device=self.device,
            path=self.cache,
            proc=self.proc,
            sys_dir=self.sys_dir,
            probe=fake,
            clock=self.clock,
        )


@pytest.fixture
def host(tmp_path: Path) -> Host:
    h = Host(tmp_path)
    (h.proc / "sys" / "kernel" / "random").mkdir(parents=True)
    (h.proc / "sys" / "kernel" / "random" / "boot_id").write_text(BOOT_ID + "\n")
    (tmp_path / "dev").mkdir()
    h.set_modules({})
    return h


def test_positive_result_is_reused_without_probing_again(host: Host) -> None:
    Path(host.device).write_text("")
    host.set_modules({"kvm": "", "kvm_intel": "Y"})
    fake = FakeProbe(usable=True)
    assert host.probe(fake).usable
    host.now += 10 * NEGATIVE_TTL  # positive answers do not expire
    again = host.probe(fake)
    assert again.usable and again.reason == "guest code ran"
    assert fake.calls == [host.device]


def test_negative_result_is_reused_within_its_ttl(host: Host) -> None:
    fake = FakeProbe(usable=False)
    assert not host.probe(fake).usable
    host.now += NEGATIVE_TTL / 2
    assert not host.probe(fake).usable
    assert len(fake.calls) == 1


def test_negative_result_is_reprobed_after_it_expires(host: Host) -> None:
    fake = FakeProbe(usable=False)
    assert not host.probe(fake).usable
    host.now += NEGATIVE_TTL + 1
    fake.usable = True
    assert host.probe(fake).usable
    assert len(fake.calls) == 2


def test_negative_result_is_reprobed_after_modprobe_creates_the_device(host: Host) -> None:
    fake = FakeProbe(usable=False)
    assert not host.probe(fake).usable  # no /dev/kvm, no kvm modules
    # the `modprobe kvm_intel` that `host check` suggests: module loaded, device node appears
    host.set_modules({"kvm": "", "kvm_intel": "N"})
    Path(host.device).write_text("")
    fake.usable = True
    assert host.probe(fake).usable
    assert len(fake.calls) == 2


def test_negative_result_is_reprobed_when_a_module_parameter_changes(host: Host) -> None:
    Path(host.device).write_text("")
    host.set_modules({"kvm": "", "kvm_amd": "0"})
    fake = FakeProbe(usable=False)
    assert not host.probe(fake).usable
    host.set_modules({"kvm": "", "kvm_amd": "1"})  # reloaded with nested=1
    fake.usable = True
    assert host.probe(fake).usable
    assert len(fake.calls) == 2


def test_negative_result_is_reprobed_when_the_device_node_is_replaced(host: Host) -> None:
    device = Path(host.device)
    device.write_text("")
    fake = FakeProbe(usable=False)
    assert not host.probe(fake).usable
    replacement = device.with_name("kvm.new")
    replacement.write_text("")
    os.replace(replacement, device)  # a new node: new inode and ctime
    assert not host.probe(fake).usable
    assert len(fake.calls) == 2


def test_a_new_boot_invalidates_even_a_positive_result(host: Host) -> None:
    Path(host.device).write_text("")
    fake = FakeProbe(usable=True)
    host.probe(fake)
    (host.proc / "sys" / "kernel" / "random" / "boot_id").write_text("another-boot\n")
    host.probe(fake)
    assert len(fake.calls) == 2


def test_refresh_probes_afresh_and_stores_what_later_calls_read(host: Host) -> None:
    fake = FakeProbe(usable=False)
    host.probe(fake)
    fake.usable = True
    assert host.probe(fake, refresh=True).usable  # what `host check` does
    fake.usable = False
    assert host.probe(fake).usable  # VM creation now sees the same fresh answer
    assert len(fake.calls) == 2


def test_an_unreadable_cache_file_means_probe_again(host: Host) -> None:
    host.cache.parent.mkdir(parents=True)
    host.cache.write_text("{not json")
    fake = FakeProbe(usable=True)
    assert host.probe(fake).usable
    assert len(fake.calls) == 1


def test_host_check_probe_refreshes_the_cache_vm_creation_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeProbe(usable=True)
    cache = tmp_path / "kvm-probe.json"
    monkeypatch.setattr(kvm_probe, "probe_kvm", fake)
    monkeypatch.setattr(kvm_probe, "cache_path", lambda: cache)
    assert CheckContext().probe().usable
    assert len(fake.calls) == 1 and cache.exists()
    fake.usable = False
    assert kvm_probe.cached_probe().usable  # no new probe: same inputs, same answer
    assert len(fake.calls) == 1
