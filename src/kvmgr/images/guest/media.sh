# Sourced by rc.sh of kvmgr's installer/cloud-image test media (kvmgr.images.test_media), after
# the modules (with the SATA CD-ROM and ISO 9660 drivers of this variant) are loaded.  Two jobs, both reported on the serial console:
#   inst.ks=file:/X on the kernel command line: a stand-in installer.  It finds X in its
#     initramfs (where kvmgr appended it), prints its checksum and the lines a test compares,
#     copies its own bootable medium (a hybrid ISO: it boots as a disk) to /dev/vda, powers off.
#   otherwise: cloud-init's NoCloud job for what the tests check: hostname, users' SSH keys,
#     runcmd and static addresses from a CD labelled cidata.
mkdir -p /run/media /run/seed
sleep 1  # SATA links come up asynchronously

kvmgr_install() {
    ks=$1
    if [ ! -f "$ks" ]; then
        echo "KVMGR-INSTALL-FAILED kickstart $ks not found"; poweroff -f
    fi
    echo "KVMGR-KS-FOUND $ks sha256=$(sha256sum "$ks" | cut -d' ' -f1)"
    grep -E '^(rootpw|user|sshkey) ' "$ks" | sed 's/^/KVMGR-KS-LINE /'
    for dev in /dev/sr0 /dev/sr1; do
        [ -b "$dev" ] && mount -t iso9660 -o ro "$dev" /run/media 2>/dev/null && break
    done
    if [ ! -f /run/media/.treeinfo ]; then
        echo "KVMGR-INSTALL-FAILED installation media not found"; poweroff -f
    fi
    umount /run/media
    echo "KVMGR-INSTALL copying $dev to /dev/vda"
    if dd if="$dev" of=/dev/vda bs=1M 2>/run/dd.log && sync; then
        echo "KVMGR-INSTALL-DONE"
    else
        echo "KVMGR-INSTALL-FAILED $(tail -n 1 /run/dd.log)"
    fi
    poweroff -f
}

case " $(cat /proc/cmdline) " in
    *" inst.ks=file:"*)
        ks=$(sed -n 's/.*inst\.ks=file:\([^ ]*\).*/\1/p' /proc/cmdline)
        kvmgr_install "$ks"
        ;;
esac

seed=""
for dev in /dev/sr0 /dev/sr1 /dev/vdb /dev/vdc; do
    [ -b "$dev" ] || continue
    if mount -t iso9660 -o ro "$dev" /run/seed 2>/dev/null; then
        [ -f /run/seed/meta-data ] && seed=$dev && break
        umount /run/seed
    fi
done
if [ -n "$seed" ]; then
    echo "KVMGR-SEED found $seed"
    name=$(sed -n 's/^local-hostname: *//p' /run/seed/meta-data | tr -d "'\"")
    [ -n "$name" ] && hostname "$name" && echo "$name" > /etc/hostname
    echo "KVMGR-SEED hostname=$(hostname)"
    # users: the first named user gets the keys listed with it; top-level keys go to root.
    user=$(sed -n 's/^- name: *//p; s/^  - name: *//p' /run/seed/user-data | head -n 1)
    home=/root
    if [ -n "$user" ]; then
        home=/home/$user
        echo "$user:x:1000:1000::$home:/bin/sh" >> /etc/passwd
    fi
    mkdir -p "$home/.ssh"
    grep -E "^ *- '?(ssh-|ecdsa-|sk-)" /run/seed/user-data | sed -E "s/^ *- '?//; s/'$//" \
        > "$home/.ssh/authorized_keys"
    echo "KVMGR-SEED keys=$(wc -l < "$home/.ssh/authorized_keys") user=${user:-root}"
    # network-config v2 as kvmgr writes it: ethernets matched by MAC, static or DHCP.
    awk '
        /^  [^ ].*:$/ { if (mac != "") print mac, name, addrs, gw; mac=""; name=""; addrs=""; gw="" }
        /macaddress:/ { gsub(/[\x27"]/, "", $2); mac=$2 }
        /set-name:/ { name=$2 }
        /^    - / && inaddr { addrs = addrs (addrs == "" ? "" : ",") $2 }
        /^    [a-z]/ { inaddr = ($1 == "addresses:") }
        /gateway4:/ { gw=$2 }
        END { if (mac != "") print mac, name, addrs, gw }
    ' /run/seed/network-config > /run/seed-nics
    while read -r mac name addrs gw; do
        for dev in /sys/class/net/*; do
            [ "$(cat "$dev/address")" = "$mac" ] || continue
            old=${dev##*/}
            [ -n "$name" ] && [ "$name" != "$old" ] && ip link set "$old" name "$name"
            [ -n "$name" ] || name=$old
            ip link set "$name" up
            for addr in $(echo "$addrs" | tr ',' ' '); do
                ip addr add "$addr" dev "$name" && touch /run/kvmgr-static
                echo "KVMGR-SEED address $name $addr"
                echo "${addr%/*}" > /run/kvmgr-ip
            done
            [ -n "$gw" ] && ip route add default via "$gw"
        done
    done < /run/seed-nics
    # runcmd: one "- command" per line.
    awk '/^runcmd:/ { on=1; next } /^[^ -]/ { on=0 } on && /^- / { sub(/^- /, ""); print }' \
        /run/seed/user-data > /run/seed-runcmd
    while read -r command; do
        echo "KVMGR-SEED runcmd $command: $(sh -c "$command" 2>&1)"
    done < /run/seed-runcmd
    umount /run/seed
fi
