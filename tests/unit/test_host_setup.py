"""Setup plans: os-release parsing, golden plans per distribution, idempotence, the real facts."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmgr.errors import Unsupported
from kvmgr.host.osrelease import parse_os_release, read_os_release
from kvmgr.host.setup import (
    DAEMONS_START,
    SetupFacts,
    Step,
    build_plan,
    gather_facts,
    installed_packages,
    profile_for,
)
from tests.golden import check_golden_json

DATA = Path(__file__).parent.parent / "data" / "os-release"
DISTROS = sorted(path.name for path in DATA.iterdir() if (path / "os-release").exists())


def _facts(distro: str, **changes: object) -> SetupFacts:
    """A fresh systemd host of ``distro``: nothing installed, nothing enabled."""
    osr = parse_os_release((DATA / distro / "os-release").read_text())
    base: dict[str, object] = {"os_release": osr, "installed": frozenset(), "systemd": True}
    return SetupFacts(**{**base, **changes})  # type: ignore[arg-type]


def test_fixtures_cover_the_required_distributions() -> None:
    assert {"centos-7", "rocky-9", "debian-12", "ubuntu-22.04"} <= set(DISTROS)


@pytest.mark.parametrize("distro", DISTROS)
def test_fresh_host_plan_matches_golden(distro: str) -> None:
    plan = build_plan(_facts(distro)).as_dict()
    check_golden_json(DATA / distro / "setup-plan.json", plan)


def test_parse_os_release_quotes_comments_and_id_like() -> None:
    osr = parse_os_release(
        '# comment\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"\n'
        "PRETTY_NAME='Rocky Linux 9.3'\nBROKEN=\"unterminated\n"
    )
    assert (osr.id, osr.version_id, osr.major) == ("rocky", "9.3", 9)
    assert osr.id_like == ("rhel", "centos", "fedora")
    assert osr.pretty_name == "Rocky Linux 9.3"
    assert osr.is_like("rhel") and not osr.is_like("debian")


def test_profiles_per_family() -> None:
    families = {d: profile_for(_facts(d).os_release) for d in DISTROS}
    assert families["centos-7"].manager == "yum"
    assert "bridge-utils" in families["centos-7"].packages
    assert families["centos-7"].units == ("libvirtd.service",)
    assert families["almalinux-8"].manager == "dnf"
    assert families["almalinux-8"].units == ("libvirtd.service",)
    assert families["rocky-9"].manager == "dnf"
    assert "virtqemud.socket" in families["rocky-9"].units
    assert "libvirtd.service" not in families["rocky-9"].units  # 9 uses modular daemons
    assert families["ubuntu-22.04"].manager == families["debian-12"].manager == "apt"


def test_unknown_distribution_is_refused_with_the_supported_list() -> None:
    with pytest.raises(Unsupported) as err:
        profile_for(parse_os_release('ID=arch\nPRETTY_NAME="Arch Linux"\n'))
    assert "Arch Linux" in err.value.message
    assert err.value.hint and "Debian" in err.value.hint
    with pytest.raises(Unsupported):
        profile_for(parse_os_release("ID=centos\nVERSION_ID=6\n"))


@pytest.mark.parametrize("distro", DISTROS)
def test_only_missing_packages_and_units_are_planned(distro: str) -> None:
    profile = profile_for(_facts(distro).os_release)
    installed = frozenset(profile.packages[1:])
    plan = build_plan(_facts(distro, installed=installed))
    install = [s for s in plan.steps if "install" in s.argv]
    assert len(install) == 1
    assert install[0].argv[-1] == profile.packages[0]
    assert not set(install[0].argv) & installed
    done = frozenset(profile.units)
    settled = _facts(
        distro, installed=frozenset(profile.packages), enabled_units=done, active_units=done
    )
    assert build_plan(settled).steps == ()


def test_enabled_but_stopped_unit_is_started() -> None:
    units = frozenset({"libvirtd.service"})
    facts = _facts(
        "debian-12",
        installed=frozenset(profile_for(_facts("debian-12").os_release).packages),
        enabled_units=units,
    )
    assert [s.argv for s in build_plan(facts).steps] == [
        ("systemctl", "enable", "--now", "libvirtd.service")
    ]


def test_without_systemd_the_daemon_step_is_kvmgrs_own_starter() -> None:
    facts = _facts("debian-12", systemd=False)
    assert build_plan(facts).steps[-1].argv == DAEMONS_START
    answering = _facts("debian-12", systemd=False, daemon_answers=True)
    assert DAEMONS_START not in [s.argv for s in build_plan(answering).steps]


def test_step_command_line_quotes_for_the_shell() -> None:
    step = Step("x", ("apt-get", "install", "a b"), {"DEBIAN_FRONTEND": "noninteractive"})
    assert step.command_line() == "DEBIAN_FRONTEND=noninteractive apt-get install 'a b'"


def test_facts_of_this_host_are_read_from_dpkg() -> None:
    """This machine is Debian 12: dpkg-query must see a package that is surely installed."""
    osr = read_os_release()
    assert osr.is_like("debian")
    assert "dpkg" in installed_packages("apt", ["dpkg", "kvmgr-no-such-package"])
    assert "kvmgr-no-such-package" not in installed_packages("apt", ["kvmgr-no-such-package"])
    facts = gather_facts()
    assert facts.os_release == osr
    assert facts.installed <= frozenset(profile_for(osr).packages)
