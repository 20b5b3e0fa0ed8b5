//! The browser side, from `cargo test`: the node tests of `presence.js`
//! (state and diff merging, batching, beacons), then the browser test, which
//! runs the `room` example on 127.0.0.1 and drives two headless Chromium
//! browsers through it with `playwright-core` (screenshots in
//! `client/test-output/`).
//!
//! Needs node 20 or newer with npm, and Debian's Chromium at
//! `/usr/bin/chromium` (`apt-get install chromium`); nothing downloads a
//! browser. Without them the test says `SKIPPED` and passes, unless
//! `PRESENCE_REQUIRE_BROWSER=1` is set (as `.ci/run` does): then it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn required() -> bool {
    std::env::var("PRESENCE_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

/// Why the browser tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    if !Path::new("/usr/bin/chromium").exists() {
        return Some("no /usr/bin/chromium (apt-get install chromium)".into());
    }
    let node = Command::new("node")
        .args(["-p", "process.versions.node.split('.')[0]"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u32>()
                .ok()
        });
    match node {
        None => Some("no node".into()),
        Some(major) if major < 20 => Some(format!("node {major} is older than 20")),
        Some(_) if Command::new("npm").arg("--version").output().is_err() => Some("no npm".into()),
        Some(_) => None,
    }
}

/// Runs `command` in `dir`, failing the test with its output if it fails.
fn run(dir: &Path, command: &mut Command) {
    let shown = format!("{command:?}");
    let status = command
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(status.success(), "{shown} failed: {status}");
}

/// The `room` example, built with the profile of this test (cargo builds
/// examples with the tests; build it again in case it was not).
fn room_example(workspace: &Path) -> PathBuf {
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .expect("the test binary lives in target/<profile>/deps");
    let binary = profile_dir.join("examples").join("room");
    if !binary.exists() {
        run(
            workspace,
            Command::new(env!("CARGO")).args(["build", "-p", "presence-axum", "--example", "room"]),
        );
    }
    binary
}

#[test]
fn the_client_in_node_and_in_a_real_browser() {
    if let Some(why) = unavailable() {
        assert!(!required(), "the browser tests cannot run: {why}");
        eprintln!("SKIPPED: the browser tests cannot run here: {why}");
        return;
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let client = crate_dir.join("client");
    let workspace = crate_dir.parent().expect("the crate is in the workspace");
    run(
        &client,
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            // playwright-core drives the machine's chromium; never fetch one.
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1"),
    );
    run(&client, Command::new("npm").args(["test", "--silent"]));
    let room = room_example(workspace);
    run(
        &client,
        Command::new("node")
            .arg("test/browser.mjs")
            .env("PRESENCE_ROOM_BIN", &room),
    );
}
