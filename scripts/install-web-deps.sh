#!/bin/sh
# Install the web UI's front-end libraries (pinned in src/kvmgr/web/package.json and its lock file)
# from the npm registry into src/kvmgr/web/static/vendor.  Idempotent; the vendor dir is not
# committed and no file in it is edited by hand.
set -eu
WEB="$(cd "$(dirname "$0")/../src/kvmgr/web" && pwd)"
VENDOR="$WEB/static/vendor"
cd "$WEB"
if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --ignore-scripts
else
    npm install --no-audit --no-fund --ignore-scripts
fi
rm -rf "$VENDOR"
mkdir -p "$VENDOR/xterm" "$VENDOR/addon-fit" "$VENDOR/swagger-ui" "$VENDOR/novnc"
cp node_modules/@xterm/xterm/lib/xterm.js node_modules/@xterm/xterm/css/xterm.css "$VENDOR/xterm/"
cp node_modules/@xterm/addon-fit/lib/addon-fit.js "$VENDOR/addon-fit/"
cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css \
    "$VENDOR/swagger-ui/"
# noVNC is used as ES modules straight from its sources (core/ and the vendored pako it imports).
cp -r node_modules/@novnc/novnc/core node_modules/@novnc/novnc/vendor "$VENDOR/novnc/"
echo "web libraries installed in $VENDOR"
