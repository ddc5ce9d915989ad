#!/bin/sh
# What busybox nc runs for each connection to port 22: an SSH server's first line, nothing more
# (kvmgr's --wait ready takes an SSH banner on the guest's address as a sign of readiness).
echo "SSH-2.0-kvmgr-demo"
