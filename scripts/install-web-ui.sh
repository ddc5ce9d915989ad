#!/bin/sh
# The web UI's console and API-docs libraries (xterm.js, noVNC, Swagger UI) for every install,
# not only the test suite: without them `kvmgr serve` serves console pages whose scripts 404.
# Installs Debian's nodejs/npm only when no npm is on PATH, then the pinned npm packages.
# Idempotent.
set -eu
if ! command -v npm >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm
fi
exec "$(dirname "$0")/install-web-deps.sh"
