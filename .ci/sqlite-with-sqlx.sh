#!/usr/bin/env bash
# CI: an app that uses sqlx's SQLite can add presence-sqlite. A build links
# one SQLite (libsqlite3-sys: links = "sqlite3"), so this creates a scratch
# app in a temporary directory depending on presence-kit with its `sqlite`
# feature (a path dependency on this repository), as apps use it, and on
# the current sqlx release with its
# SQLite driver, lets cargo resolve it afresh, checks that one
# libsqlite3-sys serves both, builds it (debug) and runs it: the app writes
# through sqlx and through presence into one file. Fails if any step does.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
app="$(mktemp -d)"
trap 'rm -rf "$app"' EXIT
# Kept between runs, apart from the workspace's own builds; no debug info
# (the build is what is checked, and it takes a few minutes on 2 cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}/sqlite-with-sqlx"
export CARGO_PROFILE_DEV_DEBUG=0

mkdir -p "$app/src"
cat > "$app/Cargo.toml" <<TOML
[package]
name = "sqlite-with-sqlx"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
presence-kit = { path = "$repo/presence", default-features = false, features = ["sqlite"] }
sqlx = { version = "0.9", features = ["runtime-tokio", "sqlite"] }
tokio = { version = "1", features = ["macros", "rt-multi-thread"] }

[workspace]
TOML
cat > "$app/src/main.rs" <<'RUST'
use presence::{Meta, PresenceKey, Topic};

#[tokio::main]
async fn main() {
    let dir = std::env::temp_dir().join(format!("sqlite-with-sqlx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.db");

    // The app's own tables, through sqlx.
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES (?1)")
        .bind("hello")
        .execute(&pool)
        .await
        .unwrap();

    // Presence in the same file, through presence-kit's SQLite store.
    let store = presence::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let key = PresenceKey::new("/notes/1", "alice", "tab").unwrap();
    store.join(&key, Meta::new()).await.unwrap();
    let members = store.count(&Topic::new("/notes/1").unwrap()).await.unwrap().members;
    store.close().await.unwrap();

    let (notes,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM notes")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (present,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM presence_entries")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!((notes, members, present), (1, 1, 1));
    println!("sqlx and presence-kit share one SQLite: {notes} note, {members} member present");
}
RUST

cd "$app"
echo "== resolving presence-kit (sqlite) with sqlx 0.9 (sqlite)"
cargo generate-lockfile --quiet
versions="$(cargo tree -i libsqlite3-sys --depth 0 --prefix none --format '{p}' | grep . | sort -u)"
echo "libsqlite3-sys in the build: $versions"
if [ "$(printf '%s\n' "$versions" | grep -c libsqlite3-sys)" -ne 1 ]; then
    echo "expected exactly one libsqlite3-sys" >&2
    exit 1
fi
cargo tree -i libsqlite3-sys --edges normal --depth 1
echo "== cargo build"
cargo build --quiet
echo "== run"
cargo run --quiet
