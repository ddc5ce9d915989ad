#!/bin/sh
# Print the readiness markers again; a console that attached late runs this to catch up.
if [ -s /run/kvmgr-ip ]; then
    echo "KVMGR-IP $(cat /run/kvmgr-ip)"
else
    echo "KVMGR-IP none"
fi
[ -e /run/kvmgr-ready ] && echo "KVMGR-READY"
exit 0
