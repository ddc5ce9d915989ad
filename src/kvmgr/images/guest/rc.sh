#!/bin/sh
# sysinit of the kvmgr demo/test guest (run once by busybox init before the serial shell starts).
# Everything a test looks for is printed on the serial console (/dev/console is ttyS0).
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /run /tmp
mount -t devpts devpts /dev/pts
hostname kvmgr-demo

# virtio and friends, in dependency order (computed with modinfo when the ISO was built).
while read -r module; do
    insmod "/lib/modules/$module.ko" 2>/dev/null || echo "kvmgr: could not load $module"
done < /etc/kvmgr/modules.order
echo "KVMGR-BOOTED"

# Installer and cloud-image variants of this guest (kvmgr.images.test_media) hook in here.
[ -x /etc/kvmgr/media.sh ] && . /etc/kvmgr/media.sh

# No udev here: online vCPUs and memory blocks that libvirt hot-adds, so /proc/cpuinfo and
# /proc/meminfo follow 'setvcpus' and memory changes.  The balloon driver adjusts MemTotal itself.
(
    while true; do
        for node in /sys/devices/system/cpu/cpu[0-9]*/online; do
            [ "$(cat "$node" 2>/dev/null)" = 0 ] && echo 1 > "$node" 2>/dev/null
        done
        for node in /sys/devices/system/memory/memory*/state; do
            [ "$(cat "$node" 2>/dev/null)" = offline ] && echo online > "$node" 2>/dev/null
        done
        sleep 1
    done
) &

# ACPI power button -> clean poweroff, so libvirt's graceful shutdown works.
acpid -c /etc/acpi -l /run/acpid.log

ip link set lo up
iface=eth0
[ -e /sys/class/net/$iface ] || iface=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
if [ -n "$iface" ] && [ ! -e /run/kvmgr-static ]; then
    ip link set "$iface" up
    # Background after the lease so it is renewed; give up waiting (but keep trying) after ~30 s.
    udhcpc -i "$iface" -s /etc/kvmgr/udhcpc.sh -t 30 -T 1 -b >/dev/null 2>&1
fi
touch /run/kvmgr-ready
/bin/kvmgr-ready

# Started after the marker, so a guest whose console kvmgr watches is ready by the marker; a VM
# without a serial console is ready by these: an SSH banner on port 22, and a guest agent that
# answers guest-ping on its virtio-serial port (no udev: the port's name is read from sysfs).
nc -ll -p 22 -e /etc/kvmgr/ssh-banner.sh >/dev/null 2>&1 &
for port in /sys/class/virtio-ports/*; do
    [ "$(cat "$port/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
    /etc/kvmgr/kvmgr-agent.sh "/dev/${port##*/}" >/dev/null 2>&1 &
done
