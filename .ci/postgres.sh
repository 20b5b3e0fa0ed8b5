#!/usr/bin/env bash
# The Postgres backend's checks beyond `cargo test --workspace`: the
# metrics test (needs the `metrics` feature), the crate without its
# optional features, its docs with every feature, and its package.
# Call from .ci/run after the workspace tests (PostgreSQL installed there;
# PRESENCE_REQUIRE_PG=1 makes a missing server fail).
set -euo pipefail
cd "$(dirname "$0")/.."
export PRESENCE_REQUIRE_PG=1

echo "== presence-postgres: metrics"
cargo test -p presence-postgres --features metrics --test metrics --locked

echo "== presence-postgres: no optional features"
cargo clippy -p presence-postgres --no-default-features --locked -- -D warnings

echo "== presence-postgres: docs with every feature"
RUSTDOCFLAGS="-D warnings" cargo doc -p presence-postgres --all-features --no-deps --locked --quiet

echo "== presence-postgres: the package verifies (with presence-core, unpublished)"
cargo package -p presence-core -p presence-postgres --locked --allow-dirty --quiet
