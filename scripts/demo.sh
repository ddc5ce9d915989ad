#!/bin/sh
# The main job, end to end: build the demo ISO, deploy a VM from it with a disk on the default
# NAT network, wait until the guest is ready, and print its name, state, IP and how long it took.
# Idempotent: a second run finds the VM and shows it instead of making another.
set -eu
KVMGR=${KVMGR:-.venv/bin/kvmgr}
DEMO_ISO=${DEMO_ISO:-/var/lib/kvmgr/demo/kvmgr-demo.iso}
NAME=${KVMGR_DEMO_NAME:-kvmgr-demo}

mkdir -p "$(dirname "$DEMO_ISO")"
"$KVMGR" image build-demo-iso "$DEMO_ISO"

if "$KVMGR" vm state "$NAME" >/dev/null 2>&1; then
    if [ "$("$KVMGR" vm state "$NAME")" != "running" ]; then
        "$KVMGR" vm start "$NAME"
    fi
    echo "VM $NAME exists already:"
    "$KVMGR" vm info "$NAME"
else
    # VNC (kvmgr's default, a unix socket only) as well as the serial console: the web UI's
    # noVNC page is half of what `kvmgr serve` shows a newcomer, and it needs a display.
    "$KVMGR" vm create "$NAME" --iso "$DEMO_ISO" --memory 256M --vcpus 1 --disk 1G \
        --network default --wait ready
fi
echo
echo "Next: '$KVMGR vm console $NAME' (Ctrl+] leaves), '$KVMGR vm list', '$KVMGR vm delete $NAME --force'"
echo "Web UI: '$KVMGR user create admin --role admin', then '$KVMGR serve --listen 127.0.0.1:8080'"
echo "and open http://127.0.0.1:8080/vms/$NAME (serial console and VNC)"
