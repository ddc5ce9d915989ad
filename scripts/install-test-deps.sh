#!/bin/sh
# What the API, PostgreSQL and browser tests need beyond scripts/install-system-deps.sh:
# Debian's chromium (Playwright drives it; no browser is ever downloaded), PostgreSQL (the tests
# start a throw-away cluster themselves), the web UI's npm libraries, and virtinst (virt-install,
# virt-clone: the peers that tests prove interoperability with and bench/ measures against),
# netplan.io (its real `netplan generate` parses the bridge files kvmgr writes), and
# virtnbdbackup (the peer bench/backup.py measures backups and restores against), and
# network-manager (tests/integration/test_bridge_nm_real.py runs its own NetworkManager, with its
# own D-Bus, inside a test network namespace; the host's own copy is never started, see below),
# and swtpm swtpm-tools (also in install-system-deps.sh: tests/integration/test_windows_install.py
# starts a Windows 11 VM, whose TPM libvirt runs with them).
# Idempotent.
set -eu
missing=""
for pkg in chromium postgresql virtinst netplan.io virtnbdbackup network-manager swtpm swtpm-tools; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
# node/npm may come from elsewhere than Debian (e.g. NodeSource); any working npm will do.
command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
if [ -n "$missing" ]; then
    apt-get update
    # shellcheck disable=SC2086 - word splitting of the package list is intended
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
    # Installed only for the tests: on a systemd host the package starts NetworkManager, which
    # would take over this machine's interfaces.  Stop it again unless it ran before.
    case "$missing" in *network-manager*)
        if [ -d /run/systemd/system ]; then systemctl disable --now NetworkManager.service || true; fi
    esac
fi
"$(dirname "$0")/install-web-deps.sh"
