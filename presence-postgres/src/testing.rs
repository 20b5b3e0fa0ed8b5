//! A Postgres server for tests, shared by every test of one process.
//!
//! `PRESENCE_PG_URL` names a server to use. Without it, a throwaway server
//! is started from the PostgreSQL binaries on the machine (`initdb` and
//! `postgres`, found through `pg_config` or the usual Debian paths) in a
//! temporary directory, as the `postgres` user when running as root (the
//! server refuses to run as root). A watchdog stops it and removes its files
//! when the test process exits. Each test gets its own schema
//! ([`unique_schema`]). Set `PRESENCE_REQUIRE_PG=1` (CI does) to make a
//! missing server fail the tests instead of skipping them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Creates `schema` on the server at `url` at schema `version` (older than
/// [`SCHEMA_VERSION`](crate::SCHEMA_VERSION) to test upgrades), with a
/// connection of its own.
pub async fn create_schema_at(
    url: &str,
    schema: &str,
    version: usize,
) -> presence_core::Result<()> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(crate::schema::db)?;
    let driver = tokio::spawn(connection);
    let result = crate::schema::migrate_to(&mut client, schema, version).await;
    drop(client);
    let _ = driver.await;
    result
}

/// Where the test server is, or why there is none.
static SERVER: OnceLock<Result<String, String>> = OnceLock::new();

/// Whether a server started here syncs its commits to disk.
static DURABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes a server started by this process sync commits to disk, as in
/// production (benches want that; tests run faster without). Call before
/// the first [`server_url`].
pub fn prefer_durable_server() {
    DURABLE.store(true, Ordering::Relaxed);
}

/// The URL of the test server, starting one if needed; `None` (after a loud
/// message) when there is none and none is required.
pub fn server_url() -> Option<String> {
    match SERVER.get_or_init(find_or_start) {
        Ok(url) => Some(url.clone()),
        Err(why) if required() => panic!("Postgres tests cannot run: {why}"),
        Err(why) => {
            eprintln!("SKIPPED: Postgres tests cannot run here: {why}");
            None
        }
    }
}

/// The config of a test store: the test server, a schema of its own named
/// after `label`, a pool of 4. Check [`unavailable`] first.
///
/// # Panics
///
/// When there is no test server.
pub fn store_config(label: &str) -> crate::PostgresConfig {
    let url = server_url().expect("a test server (check testing::unavailable first)");
    let mut config = crate::PostgresConfig::new(url);
    config.schema = unique_schema(label);
    config.pool_size = 4;
    config
}

/// Why the Postgres tests cannot run, if they cannot (and are not required).
pub fn unavailable() -> Option<String> {
    match server_url() {
        Some(_) => None,
        None => Some("no Postgres server (set PRESENCE_PG_URL or install PostgreSQL)".into()),
    }
}

fn required() -> bool {
    std::env::var("PRESENCE_REQUIRE_PG").is_ok_and(|v| v == "1")
}

/// A schema name no other test of any process uses.
pub fn unique_schema(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "t_{label}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn find_or_start() -> Result<String, String> {
    if let Ok(url) = std::env::var("PRESENCE_PG_URL") {
        return Ok(url);
    }
    let bin = binaries().ok_or("no PostgreSQL binaries (initdb, postgres) found")?;
    start(&bin)
}

fn binaries() -> Option<PathBuf> {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"));
    from_pg_config
        .into_iter()
        .chain(debian)
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `script` with sh, as `postgres` when we are root.
fn shell(script: &str) -> Command {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    };
    command.env_remove("PGDATA");
    command
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn start(bin: &Path) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("presence-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if is_root() {
        let status = Command::new("chown")
            .args(["postgres:", &dir.display().to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!(
                "cannot hand {} to the postgres user",
                dir.display()
            ));
        }
    }
    let data = dir.join("data");
    let initdb = format!(
        "'{}' -D '{}' -U presence --auth=trust -E UTF8 --locale=C > '{}' 2>&1",
        bin.join("initdb").display(),
        data.display(),
        dir.join("initdb.log").display()
    );
    let status = shell(&initdb).status().map_err(|e| e.to_string())?;
    if !status.success() {
        let log = std::fs::read_to_string(dir.join("initdb.log")).unwrap_or_default();
        return Err(format!("initdb failed: {log}"));
    }
    let port = free_port()?;
    // The server runs in the background; the watchdog loop ends it (and
    // removes its files) once this test process is gone.
    let server = format!(
        "'{postgres}' -D '{data}' -p {port} -k '{dir}' -c listen_addresses=127.0.0.1 \
         -c max_connections=300 -c fsync={fsync} > '{log}' 2>&1 & pid=$!; \
         while [ -d /proc/{parent} ] && kill -0 $pid 2>/dev/null; do sleep 1; done; \
         kill -INT $pid 2>/dev/null; wait $pid; rm -rf '{dir}'",
        postgres = bin.join("postgres").display(),
        data = data.display(),
        dir = dir.display(),
        log = dir.join("server.log").display(),
        parent = std::process::id(),
        fsync = if DURABLE.load(Ordering::Relaxed) {
            "on"
        } else {
            "off"
        },
    );
    shell(&server)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(format!("postgres://presence@127.0.0.1:{port}/postgres"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    Err(format!("postgres did not start within 30 s: {log}"))
}
