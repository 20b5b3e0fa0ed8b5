#!/usr/bin/env bash
# CI step for the Redis backend: makes sure redis-server and redis-cli are
# installed (Debian's redis-server package; idempotent, a few seconds when
# already there). The presence-redis tests start their own throwaway server
# and three-master cluster on loopback ports; .ci/run sets
# PRESENCE_REQUIRE_REDIS=1 so that a missing server fails them.
#
# With `--test`, also runs the presence-redis tests (about two minutes on
# 2 cores, build excluded), for running this backend's CI alone.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
# The package's own service is not needed (the tests start their servers):
# stop it if the install started one, so it holds no port or memory.
if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
    systemctl stop redis-server || true
fi
redis-server --version

if [ "${1:-}" = "--test" ]; then
    PRESENCE_REQUIRE_REDIS=1 cargo test -p presence-redis --locked
fi
