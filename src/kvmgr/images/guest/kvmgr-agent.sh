#!/bin/sh
# A minimal stand-in for qemu-guest-agent on its virtio-serial port ($1): it answers guest-sync
# (libvirt sends one before every command) and guest-ping, and refuses everything else, so
# libvirt falls back to ACPI for shutdown and to other address sources.  One JSON command a line.
exec 3<>"$1"
while true; do
    # No host side connected yet (or it went away): the port reads end of file; try again.
    if ! read -r line <&3; then
        sleep 1
        continue
    fi
    case "$line" in
        *'"guest-sync'*)
            id=$(echo "$line" | sed -n 's/.*"id" *: *\([0-9]*\).*/\1/p')
            echo "{\"return\": ${id:-0}}" >&3
            ;;
        *'"guest-ping"'*)
            echo '{"return": {}}' >&3
            ;;
        *'"execute"'*)
            echo '{"error": {"class": "CommandNotFound", "desc": "the kvmgr demo agent answers guest-sync and guest-ping only"}}' >&3
            ;;
    esac
done
