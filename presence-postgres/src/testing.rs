//! Postgres servers for tests and benches (feature `testing`; not part of
//! the store's API).
//!
//! `PRESENCE_PG_URL` names a server to use as the shared one. Without it, a
//! throwaway server is started from the PostgreSQL binaries on the machine
//! (`initdb` and `postgres`, found through `pg_config` or the usual Debian
//! paths) in a temporary directory, as the `postgres` user when running as
//! root (the server refuses to run as root), and shared by every test of
//! the process ([`server_url`]). [`TestServer::start`] starts one of a
//! test's own (to pause it, or with TLS). A server is handed out only once
//! a login and a query succeed; a port taken by someone else in the
//! meantime is detected and another tried. A watchdog stops every server
//! and removes its files when the test process exits. Each test gets its
//! own schema ([`unique_schema`]). Set `PRESENCE_REQUIRE_PG=1` (CI does) to
//! make a missing server fail the tests instead of skipping them.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
        .map_err(crate::errors::db)?;
    let driver = tokio::spawn(connection);
    let result = crate::schema::migrate_to(&mut client, schema, version).await;
    drop(client);
    let _ = driver.await;
    result
}

/// Where the shared test server is, or why there is none.
static SERVER: OnceLock<Result<SharedServer, String>> = OnceLock::new();

enum SharedServer {
    /// `PRESENCE_PG_URL`.
    External(String),
    /// Started here; lives as long as the process.
    Started(TestServer),
}

/// Whether a shared server started here syncs its commits to disk.
static DURABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the shared server (when started by this process) sync commits to
/// disk, as in production (benches want that; tests run faster without).
/// Call before the first [`server_url`].
pub fn prefer_durable_server() {
    DURABLE.store(true, Ordering::Relaxed);
}

/// The URL of the shared test server, starting one if needed; `None`
/// (after a loud message) when there is none and none is required.
pub fn server_url() -> Option<String> {
    let found = SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("PRESENCE_PG_URL") {
            return Ok(SharedServer::External(url));
        }
        TestServer::start(ServerOptions {
            durable: DURABLE.load(Ordering::Relaxed),
            ..ServerOptions::default()
        })
        .map(SharedServer::Started)
    });
    match found {
        Ok(SharedServer::External(url)) => Some(url.clone()),
        Ok(SharedServer::Started(server)) => Some(server.url().to_owned()),
        Err(why) if required() => panic!("Postgres tests cannot run: {why}"),
        Err(why) => {
            eprintln!("SKIPPED: Postgres tests cannot run here: {why}");
            None
        }
    }
}

/// The config of a test store: the shared test server, a schema of its own
/// named after `label`, a pool of 4. Check [`unavailable`] first.
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

/// Whether tests may start servers of their own (binaries found), or why
/// not; `PRESENCE_REQUIRE_PG=1` turns a "no" into a panic.
pub fn can_start_servers() -> Result<(), String> {
    match binaries() {
        Some(_) => Ok(()),
        None if required() => panic!("Postgres tests cannot run: no PostgreSQL binaries found"),
        None => Err("no PostgreSQL binaries (initdb, postgres) found".into()),
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

/// How to start a [`TestServer`].
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// `fsync = on` (off by default: tests run faster).
    pub durable: bool,
    /// `ssl = on` with this certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
}

/// A server certificate (PEM, the chain it sends) and its private key (PEM).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

/// A throwaway PostgreSQL server in a directory of its own, stopped and
/// removed when dropped (or, at the latest, when the process exits). Its
/// superuser `presence` logs in without a password from 127.0.0.1.
#[derive(Debug)]
pub struct TestServer {
    url: String,
    port: u16,
    dir: PathBuf,
    /// `runuser` (or the server itself when not root).
    child: Child,
    pid: u32,
}

impl TestServer {
    /// Starts a server; returns once it takes logins and answers queries.
    pub fn start(options: ServerOptions) -> Result<Self, String> {
        let bin = binaries().ok_or("no PostgreSQL binaries (initdb, postgres) found")?;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "presence-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let data = dir.join("data");
        let initdb = format!(
            "'{}' -D '{}' -U presence --auth=trust -E UTF8 --locale=C > '{}' 2>&1",
            bin.join("initdb").display(),
            data.display(),
            dir.join("initdb.log").display()
        );
        let mut tls_settings = Vec::new();
        if let Some(tls) = &options.tls {
            let cert = dir.join("server.crt");
            let key = dir.join("server.key");
            std::fs::write(&cert, &tls.cert_pem).map_err(|e| e.to_string())?;
            std::fs::write(&key, &tls.key_pem).map_err(|e| e.to_string())?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
            tls_settings = vec![
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", cert.display()),
                format!("ssl_key_file={}", key.display()),
            ];
        }
        hand_to_postgres(&dir)?;
        let status = shell(&initdb).status().map_err(|e| e.to_string())?;
        if !status.success() {
            let log = std::fs::read_to_string(dir.join("initdb.log")).unwrap_or_default();
            return Err(format!("initdb failed: {log}"));
        }
        let mut last = String::new();
        // A port found free may be taken before the server binds it: the
        // server then exits saying so, and another port is tried.
        for _ in 0..5 {
            let port = free_port()?;
            let log_path = dir.join("server.log");
            let log = File::create(&log_path).map_err(|e| e.to_string())?;
            let mut settings = vec![
                "listen_addresses=127.0.0.1".to_owned(),
                "max_connections=300".to_owned(),
                format!("fsync={}", if options.durable { "on" } else { "off" }),
            ];
            settings.extend(tls_settings.iter().cloned());
            let mut command = as_postgres(&bin.join("postgres"));
            command
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&dir);
            for setting in &settings {
                command.arg("-c").arg(setting);
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start postgres: {e}"))?;
            let url = format!("postgres://presence@127.0.0.1:{port}/postgres");
            match wait_until_ready(child, &url, &data, &log_path) {
                Ok((child, pid)) => {
                    watchdog(&dir, &data);
                    return Ok(Self {
                        url,
                        port,
                        dir,
                        child,
                        pid,
                    });
                }
                Err(Ready::PortTaken(log)) => last = log,
                Err(Ready::Failed(why)) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(why);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(format!("postgres found no free port in 5 tries: {last}"))
    }

    /// `postgres://presence@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory (data, log, certificates).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's processes: the postmaster and its children.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                // pid (comm) state ppid ...: comm may hold spaces, so
                // read after its closing parenthesis.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(self.pid) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to every process of the server.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let pids: Vec<String> = self.pids().iter().map(u32::to_string).collect();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(&pids)
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{signal} {pids:?} failed"))
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
            .status();
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && Path::new(&format!("/proc/{}", self.pid)).exists() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

enum Ready {
    /// Someone else bound the port first.
    PortTaken(String),
    Failed(String),
}

/// Waits until a login and a query succeed on `url`; the postmaster's pid.
fn wait_until_ready(
    mut child: Child,
    url: &str,
    data: &Path,
    log: &Path,
) -> Result<(Child, u32), Ready> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(
                if log.contains("could not bind") || log.contains("already in use") {
                    Ready::PortTaken(log)
                } else {
                    Ready::Failed(format!("postgres exited ({status}) while starting: {log}"))
                },
            );
        }
        if let Some(pid) = postmaster_pid(data)
            && login_and_query(url, data)
        {
            return Ok((child, pid));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let log = std::fs::read_to_string(log).unwrap_or_default();
    Err(Ready::Failed(format!(
        "postgres did not take logins within 60 s: {log}"
    )))
}

fn postmaster_pid(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether a login and `SELECT 1` succeed within a few seconds (on a
/// thread of its own: callers may be inside a runtime).
/// Whether a login and a query succeed on `url`, answered by the server of
/// `data`: until ours has bound the port (or exited, finding it taken),
/// another harness's server may answer on it.
fn login_and_query(url: &str, data: &Path) -> bool {
    let url = url.to_owned();
    let ours = data.canonicalize().unwrap_or_else(|_| data.to_owned());
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return false;
        };
        runtime.block_on(async move {
            let attempt = async {
                let (client, connection) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                let driver = tokio::spawn(connection);
                let answered = client
                    .query_one("SELECT current_setting('data_directory')", &[])
                    .await
                    .map(|row| row.get::<_, String>(0));
                drop(client);
                let _ = driver.await;
                answered
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(theirs)) => {
                    let theirs = PathBuf::from(theirs);
                    theirs.canonicalize().unwrap_or(theirs) == ours
                }
                _ => false,
            }
        })
    })
    .join()
    .unwrap_or(false)
}

/// Stops the server in `data` and removes `dir` once this process is gone
/// (or stops watching when `dir` is removed first).
fn watchdog(dir: &Path, data: &Path) {
    let script = format!(
        "while [ -d /proc/{parent} ] && [ -d '{dir}' ]; do sleep 1; done; \
         if [ -d '{dir}' ]; then \
           pid=$(head -1 '{data}/postmaster.pid' 2>/dev/null); \
           if [ -n \"$pid\" ]; then kill -INT $pid; kill -CONT $pid; \
             for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 $pid 2>/dev/null || break; sleep 1; done; \
             kill -KILL $pid 2>/dev/null; fi; \
           rm -rf '{dir}'; \
         fi",
        parent = std::process::id(),
        dir = dir.display(),
        data = data.display(),
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
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

/// Gives `dir` (and what is in it) to the `postgres` user when we are root.
fn hand_to_postgres(dir: &Path) -> Result<(), String> {
    if !is_root() {
        return Ok(());
    }
    let status = Command::new("chown")
        .args(["-R", "postgres:", &dir.display().to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "cannot hand {} to the postgres user",
            dir.display()
        ))
    }
}

/// `program`, run as `postgres` when we are root.
fn as_postgres(program: &Path) -> Command {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command.env_remove("PGDATA");
    command
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
