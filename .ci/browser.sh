#!/usr/bin/env bash
# The web edge's browser side (presence-axum/client): the node tests of
# presence.js, then the browser test, which runs the `room` example on
# 127.0.0.1 and drives two headless Chromium browsers through it with
# playwright-core. Installs what is missing (Debian's chromium, the npm
# packages of the lock file); never downloads a browser of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== chromium and node for the browser client"
if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
/usr/bin/chromium --version 2>/dev/null | grep -v '^\s*$' | tail -1
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    echo "node $(node --version) is too old: the client's tests need node 20 or newer" >&2
    exit 1
fi
echo "node $(node --version), npm $(npm --version)"

cd presence-axum/client
# playwright-core drives the machine's chromium; it never fetches one.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
npm ci --no-audit --no-fund --loglevel=error

echo "== presence.js: node tests"
node --test test/merge.test.js test/client.test.js

echo "== the room example (the workspace's debug build)"
(cd ../.. && cargo build -p presence-axum --example room --locked --quiet)

echo "== the browser test (screenshots in presence-axum/client/test-output)"
PRESENCE_ROOM_BIN="$PWD/../../target/debug/examples/room" node test/browser.mjs
