#!/bin/sh
# Install the Debian 12 packages kvmgr, its demo ISO and its tests need.  Idempotent: when every
# package is already installed it changes nothing and does not even refresh the package lists.
#
# Why each package is here:
#   qemu-system-x86 qemu-utils      the hypervisor, and qemu-img for jobs libvirt's storage API lacks
#   libvirt-daemon-system           libvirtd, virtlogd and the default NAT network definition
#   libvirt-clients                 virsh, for people debugging by hand (kvmgr itself never calls it)
#   libvirt-dev pkg-config          building the libvirt-python binding in the venv
#   python3-venv                    the venv kvmgr runs in
#   gcc python3-dev                 compiling libvirt-python (PyPI ships it as source only)
#   dnsmasq-base iptables iproute2  DHCP/DNS and NAT of libvirt networks; `ip netns` for daemons
#   xorriso isolinux syslinux-common  building the bootable demo/test ISO
#   busybox-static linux-image-amd64  userland and kernel (plus virtio modules) of the demo ISO
#   cpio                            the unit tests read the demo initramfs back with GNU cpio
#   osinfo-db                       OS detection of installation ISOs
#   ovmf                            UEFI firmware for VMs that ask for it
#   swtpm swtpm-tools               the TPM 2.0 libvirt emulates for Windows 11 (Setup refuses a
#                                   machine without one; swtpm-tools sets up its state)
#   cloud-init                      the tests validate generated user-data with 'cloud-init schema'
#                                   (inert on the host: with no datasource, ds-identify disables it)
#   openssh-server openssh-client openssl  the test lab's hosts (kvmgr/host/lab.py): an sshd per
#                                   host for qemu+ssh, keys, and the CA and certificates of qemu+tls
set -eu

PACKAGES="qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
dnsmasq-base iptables iproute2 xorriso isolinux syslinux-common busybox-static linux-image-amd64
cpio osinfo-db ovmf swtpm swtpm-tools python3-venv gcc python3-dev openssh-server openssh-client openssl cloud-init"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

missing=""
for package in $PACKAGES; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    if [ "$status" != "installed" ]; then
        missing="$missing $package"
    fi
done

# swtpm's local CA must belong to tss, the user libvirt runs swtpm as.  A libvirtd started
# before swtpm-tools created tss ran swtpm as root and left root's CA files, and every later
# daemon then fails to make a new TPM.  The same check as 'kvmgr host check' (kvmgr/host/
# swtpm_ca.py), done here because this script runs before kvmgr is installed.
repair_swtpm_ca() {
    ca=/var/lib/swtpm-localca
    if [ -d "$ca" ] && id tss >/dev/null 2>&1 && [ -n "$(find "$ca" ! -user tss -print -quit)" ]; then
        echo "swtpm local CA: giving $ca back to tss"
        chown -R tss "$ca"
    fi
}

if [ -z "$missing" ]; then
    echo "system packages: all present"
    repair_swtpm_ca
    exit 0
fi

echo "system packages: installing$missing"
apt-get update
# shellcheck disable=SC2086  # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
repair_swtpm_ca
