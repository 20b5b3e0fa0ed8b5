//! The built `presence` binary, run as a user would, on temporary SQLite files.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A temporary directory holding one store file.
struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("presence.db")
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path().display())
    }

    /// `presence --store URL ARGS...`, waited for.
    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run presence")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_presence"));
        command
            .arg("--store")
            .arg(self.url())
            .args(args)
            .env_remove("PRESENCE_STORE");
        command
    }

    /// Runs, expects success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "presence {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs with `--json`, expects success, parses stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).expect("stdout is one JSON document")
    }

    /// Runs, expects failure with exactly one line on stderr; returns it.
    fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(!output.status.success(), "presence {args:?} succeeded");
        assert!(
            output.stdout.is_empty(),
            "a failure prints nothing on stdout"
        );
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "one clear line, got {stderr:?}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        stderr
    }
}

/// A running command whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start presence");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line that parses as JSON and satisfies `wanted`.
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                let status = self.child.try_wait().unwrap();
                let mut stderr = String::new();
                if status.is_some()
                    && let Some(mut pipe) = self.child.stderr.take()
                {
                    std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
                }
                panic!("no line with {what} within 20 s (exit: {status:?}; stderr: {stderr})");
            };
            let value: Value = serde_json::from_str(&line).expect("each line is JSON");
            if wanted(&value) {
                return value;
            }
        }
    }
}

impl Running {
    /// Sends `signal` (`TERM`, `INT`) and waits (up to 20 s) for the exit;
    /// returns whether it exited with success and what it wrote on stderr.
    fn stop_with(mut self, signal: &str) -> (bool, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running 20 s after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
        }
        (status.success(), stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn member_names(members: &Value) -> Vec<String> {
    members
        .as_array()
        .expect("an array of members")
        .iter()
        .map(|m| m["member"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn join_members_count_topics_touch_leave() {
    let store = Store::new();
    let joined = store.json(&["join", "/chat/1", "alice", "--meta", r#"{"typing":true}"#]);
    assert_eq!(joined["first_for_member"], true);
    assert_eq!(joined["entry"]["key"]["connection"], "cli");
    assert_eq!(joined["entry"]["meta"]["typing"], true);

    let text = store.ok(&["join", "/chat/1", "alice", "--connection", "phone"]);
    assert!(text.contains("another connection"), "{text}");
    store.ok(&["join", "/chat/1", "bob"]);
    store.ok(&["join", "/chat/2", "alice"]);

    let members = store.json(&["members", "/chat/1"]);
    assert_eq!(member_names(&members), ["alice", "bob"]);
    assert_eq!(members[0]["connections"].as_array().unwrap().len(), 2);
    let table = store.ok(&["members", "/chat/1"]);
    assert!(table.starts_with("MEMBER"), "{table}");
    assert!(table.contains(r#"{"typing":true}"#), "{table}");
    assert!(table.contains("2 members, 3 connections"), "{table}");

    let counts = store.json(&["count", "/chat/1"]);
    assert_eq!(counts, serde_json::json!({"members": 2, "connections": 3}));
    assert_eq!(
        store.ok(&["count", "/chat/1"]).trim(),
        "2 members, 3 connections"
    );

    let topics = store.json(&["topics", "alice"]);
    assert_eq!(topics, serde_json::json!(["/chat/1", "/chat/2"]));

    let touched = store.json(&["touch", "/chat/1", "bob"]);
    assert_eq!(touched["present"], true);
    let absent = store.run(&["touch", "/chat/1", "nobody", "--json"]);
    assert_eq!(
        absent.status.code(),
        Some(1),
        "touching an absent entry fails"
    );
    let absent: Value = serde_json::from_slice(&absent.stdout).unwrap();
    assert_eq!(absent["present"], false);

    let left = store.json(&["leave", "/chat/1", "alice", "--connection", "phone"]);
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["last_for_member"], false);
    let left = store.json(&["leave", "/chat/1", "alice"]);
    assert_eq!(left[0]["last_for_member"], true);
    assert_eq!(
        store.ok(&["leave", "/chat/1", "alice"]).trim(),
        "nothing left"
    );
    assert_eq!(member_names(&store.json(&["members", "/chat/1"])), ["bob"]);

    let limited = store.fails(&["join", "/chat/1", "carol", "--max-members", "1"]);
    assert!(limited.contains("is full"), "{limited}");
}

#[test]
fn sweep_removes_old_entries_once() {
    let store = Store::new();
    store.ok(&["join", "room", "alice"]);
    store.ok(&["join", "other", "bob"]);
    assert_eq!(
        store.json(&["sweep", "--older-than", "1h"]),
        serde_json::json!([])
    );
    std::thread::sleep(Duration::from_millis(5));
    let swept = store.json(&["sweep", "--older-than", "1ms", "--topic", "room"]);
    assert_eq!(swept.as_array().unwrap().len(), 1);
    assert_eq!(swept[0]["reason"], "expired");
    let swept = store.json(&["sweep", "--older-than", "1ms"]);
    assert_eq!(swept[0]["entry"]["key"]["member"], "bob");
    assert_eq!(
        store.ok(&["sweep", "--older-than", "1ms"]).trim(),
        "nothing expired"
    );
}

#[test]
fn migrate_creates_the_schema_once() {
    let store = Store::new();
    assert!(!store.path().exists());
    let migrated = store.json(&["migrate"]);
    assert_eq!(migrated["migrated"], true);
    assert!(store.path().exists());
    assert!(store.ok(&["migrate"]).contains("is up to date"));
}

#[test]
fn the_store_comes_from_the_environment() {
    let store = Store::new();
    let output = Command::new(env!("CARGO_BIN_EXE_presence"))
        .args(["join", "room", "alice"])
        .env("PRESENCE_STORE", store.url())
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(member_names(&store.json(&["members", "room"])), ["alice"]);
}

#[test]
fn sweeper_reports_expired_entries_as_they_go() {
    let store = Store::new();
    store.ok(&["migrate"]);
    let mut sweeper =
        Running::start(store.command(&["sweeper", "--ttl", "200ms", "--every", "50ms", "--json"]));
    store.ok(&["join", "room", "ghost", "--connection", "tab"]);
    let departure = sweeper.wait_for("the ghost's departure", |line| {
        line["entry"]["key"]["member"] == "ghost"
    });
    assert_eq!(departure["reason"], "expired");
    assert_eq!(departure["last_for_member"], true);
    assert_eq!(store.json(&["count", "room"])["members"], 0);
}

#[test]
fn watch_prints_joins_and_leaves_of_other_processes() {
    let store = Store::new();
    store.ok(&["join", "room", "early"]);
    let mut watch = Running::start(store.command(&["watch", "room", "--poll", "50ms", "--json"]));
    let state = watch.wait_for("the state", |line| line["type"] == "state");
    assert_eq!(member_names(&state["members"]), ["early"]);

    store.ok(&["join", "room", "alice"]);
    let diff = watch.wait_for("alice's join", |line| line["type"] == "diff");
    assert_eq!(member_names(&diff["joins"]), ["alice"]);
    assert_eq!(diff["counts"]["members"], 2);

    store.ok(&["leave", "room", "early"]);
    let diff = watch.wait_for("early's leave", |line| line["type"] == "diff");
    assert_eq!(member_names(&diff["leaves"]), ["early"]);
    assert_eq!(diff["counts"]["members"], 1);
}

#[test]
fn demo_runs_and_summarizes() {
    let store = Store::new();
    let summary = store.json(&["demo", "--users", "30", "--duration", "3s", "--ttl", "1s"]);
    assert_eq!(summary["live_view_matches_store"], true, "{summary}");
    assert_eq!(summary["failed_calls"], 0, "{summary}");
    assert!(summary["joins"].as_u64().unwrap() >= 30, "{summary}");
    assert!(summary["leaves"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["peak_members"].as_u64().unwrap() > 0, "{summary}");
    // The room is left empty.
    assert_eq!(store.json(&["count", "demo/room"])["connections"], 0);
}

#[test]
fn bad_input_is_one_line_and_changes_nothing() {
    let store = Store::new();
    // Nothing is created for a refused call, not even the file.
    let line = store.fails(&["join", "", "alice"]);
    assert!(line.contains("invalid topic"), "{line}");
    assert!(!store.path().exists(), "a refused call created the store");

    store.ok(&["join", "room", "alice", "--meta", r#"{"v":1}"#]);
    let before = store.json(&["members", "room"]);
    for meta in ["[1, 2]", "\"text\"", "{not json", "42"] {
        let line = store.fails(&["join", "room", "bob", "--meta", meta]);
        assert!(line.contains("invalid meta"), "{meta}: {line}");
        let line = store.fails(&["join", "room", "alice", "--meta", meta]);
        assert!(line.contains("invalid meta"), "{meta}: {line}");
    }
    let line = store.fails(&["leave", "room", &"x".repeat(256)]);
    assert!(line.contains("invalid member"), "{line}");
    let line = store.fails(&["touch", "room", "alice", "--connection", ""]);
    assert!(line.contains("invalid connection"), "{line}");
    assert_eq!(store.json(&["members", "room"]), before, "nothing changed");

    let unknown = Command::new(env!("CARGO_BIN_EXE_presence"))
        .args(["--store", "gopher://localhost", "count", "room"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    let line = String::from_utf8(unknown.stderr).unwrap();
    assert_eq!(line.lines().count(), 1);
    assert!(
        line.contains("invalid url") && line.contains("\"gopher\""),
        "{line}"
    );

    let line = store.fails(&["sweeper", "--ttl", "0s"]);
    assert!(line.contains("invalid ttl"), "{line}");
    let line = store.fails(&["demo", "--users", "0"]);
    assert!(line.contains("invalid users"), "{line}");
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_kept() {
    let store = Store::new();
    std::fs::write(store.path(), b"not a database at all, just text").unwrap();
    let line = store.fails(&["count", "room"]);
    assert!(line.contains("sqlite"), "{line}");
    assert_eq!(
        std::fs::read(store.path()).unwrap(),
        b"not a database at all, just text"
    );
    assert!(Path::new(&store.path()).exists());
}

#[test]
fn sigterm_and_ctrl_c_end_running_commands_cleanly() {
    let store = Store::new();
    store.ok(&["join", "room", "early"]);
    for signal in ["TERM", "INT"] {
        let mut sweeper = Running::start(
            store.command(&["sweeper", "--ttl", "200ms", "--every", "20ms", "--json"]),
        );
        store.ok(&["join", "room", "ghost"]);
        sweeper.wait_for("the ghost's departure", |line| {
            line["entry"]["key"]["member"] == "ghost"
        });
        let (clean, stderr) = sweeper.stop_with(signal);
        assert!(clean && stderr.is_empty(), "sweeper, SIG{signal}: {stderr}");
    }
    // `watch` on SQLite with a fast poll used to panic now and then when
    // stopped ("Task has been cancelled"): stop it many times mid-read.
    for round in 0..30 {
        let mut watch =
            Running::start(store.command(&["watch", "room", "--poll", "1ms", "--json"]));
        watch.wait_for("the state", |line| line["type"] == "state");
        let signal = if round % 2 == 0 { "INT" } else { "TERM" };
        let (clean, stderr) = watch.stop_with(signal);
        assert!(clean && stderr.is_empty(), "watch, round {round}: {stderr}");
    }
}

#[test]
fn errors_print_their_cause_and_never_a_secret() {
    let store = Store::new();
    for url in [
        // Nothing listens on port 1: the driver's cause must be printed.
        "postgres://app:s3cret@127.0.0.1:1/db?connect_timeout=2",
        "host=127.0.0.1 port=1 user=app password=s3cret connect_timeout=2",
        "gopher://app:s3cret@localhost/x",
        "postgres://app:s3cret@[::1/db",
        // A raw `/` in the password: tokio-postgres reads it as the password.
        "postgres://app:s3/cret@127.0.0.1:1/db?connect_timeout=2",
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_presence"))
            .args(["--store", url, "count", "room"])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{url}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{url}: {stderr}");
        assert!(
            !stderr.contains("cret"),
            "{url} printed its password: {stderr}"
        );
        if url.contains("127.0.0.1:1") || url.contains("port=1") {
            assert!(
                stderr.to_lowercase().contains("connection refused"),
                "{url}: the cause is missing: {stderr}"
            );
        }
    }
    drop(store);
}

/// What `migrate` prints names the store without its password, also one
/// with a raw `/` in it (tokio-postgres reads the password up to the first
/// `@`; our masking used to stop at the `/` and print the rest).
#[test]
fn migrate_prints_the_store_without_its_password() {
    let Some(url) = presence_postgres::testing::server_url() else {
        return;
    };
    // The test server trusts loopback logins, so any password works.
    let schema = presence_postgres::testing::unique_schema("cli");
    let with_password = format!(
        "{}?schema={schema}",
        url.replacen("presence@", "presence:s3/cret@", 1)
    );
    assert_ne!(with_password, url, "the harness URL names the user");
    for args in [&["migrate"][..], &["--json", "migrate"][..]] {
        let output = Command::new(env!("CARGO_BIN_EXE_presence"))
            .arg("--store")
            .arg(&with_password)
            .args(args)
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{args:?}: {printed}");
        assert!(
            printed.contains("***"),
            "{args:?} names the store: {printed}"
        );
        assert!(
            !printed.contains("cret"),
            "{args:?} printed the password: {printed}"
        );
    }
}

#[test]
fn a_failing_sweeper_says_so_each_time_and_keeps_trying() {
    let store = Store::new();
    store.ok(&["migrate"]);
    let url = format!("{}?busy_timeout=50ms", store.url());
    let mut command = Command::new(env!("CARGO_BIN_EXE_presence"));
    command
        .args([
            "--store", &url, "sweeper", "--ttl", "300ms", "--every", "50ms", "--json",
        ])
        .env_remove("PRESENCE_STORE")
        .env_remove("RUST_LOG");
    let mut sweeper = Running::start(command);
    store.ok(&["join", "room", "first"]);
    sweeper.wait_for("the first departure", |line| {
        line["entry"]["key"]["member"] == "first"
    });
    // Another process holds the write lock: every sweep fails meanwhile.
    let blocker = rusqlite::Connection::open(store.path()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    blocker.execute_batch("ROLLBACK").unwrap();
    // Once the lock is gone, sweeps work again.
    store.ok(&["join", "room", "ghost"]);
    sweeper.wait_for("the ghost's departure", |line| {
        line["entry"]["key"]["member"] == "ghost"
    });
    let (clean, stderr) = sweeper.stop_with("TERM");
    assert!(clean, "{stderr}");
    let failures = stderr.matches("presence sweep failed").count();
    assert!(failures >= 2, "each failed sweep is reported: {stderr}");
    assert!(
        stderr.contains("locked") || stderr.contains("busy"),
        "the cause is printed: {stderr}"
    );
    assert!(stderr.contains("succeed again"), "{stderr}");
}
