//! Redis servers for tests and benches (the `testing` feature), shared by
//! every test of one process.
//!
//! `PRESENCE_REDIS_URL` names a server to use, and `PRESENCE_REDIS_CLUSTER`
//! a cluster's nodes (comma-separated `host:port` or `redis://` URLs).
//! Without them, throwaway servers are started from the machine's
//! `redis-server` (Debian's `redis-server` package) on free loopback ports:
//! one server, and for the cluster tests three masters joined with
//! `redis-cli --cluster create`. A watchdog stops them and removes their
//! files when the test process exits. Each test gets its own key prefix
//! ([`unique_prefix`]). `PRESENCE_REQUIRE_REDIS=1` (CI sets it) makes a
//! missing server fail the tests instead of skipping them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::RedisConfig;

static SERVER: OnceLock<Result<String, String>> = OnceLock::new();

/// Whether servers started here keep an append-only file (fsync every second).
static DURABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes servers started by this process keep an append-only file synced
/// every second, the configuration the crate recommends for production
/// (benches want that; tests run without). Call before the first
/// [`server_url`] or [`cluster_nodes`].
pub fn prefer_durable_server() {
    DURABLE.store(true, Ordering::Relaxed);
}
static CLUSTER: OnceLock<Result<Vec<String>, String>> = OnceLock::new();

fn required() -> bool {
    std::env::var("PRESENCE_REQUIRE_REDIS").is_ok_and(|v| v == "1")
}

fn found<T: Clone>(what: &str, result: &Result<T, String>) -> Option<T> {
    match result {
        Ok(found) => Some(found.clone()),
        Err(why) if required() => panic!("Redis {what} tests cannot run: {why}"),
        Err(why) => {
            eprintln!("SKIPPED: Redis {what} tests cannot run here: {why}");
            None
        }
    }
}

/// The URL of the shared test server, starting one if needed; `None`
/// (after a loud message) when there is none and none is required.
pub fn server_url() -> Option<String> {
    found(
        "server",
        SERVER.get_or_init(|| match std::env::var("PRESENCE_REDIS_URL") {
            Ok(url) => Ok(url),
            Err(_) => Server::start().map(|server| {
                let url = server.url();
                // Shared by the whole process: it lives as long as the process.
                std::mem::forget(server);
                url
            }),
        }),
    )
}

/// The node URLs of the shared test cluster, starting one if needed.
pub fn cluster_nodes() -> Option<Vec<String>> {
    found(
        "cluster",
        CLUSTER.get_or_init(|| match std::env::var("PRESENCE_REDIS_CLUSTER") {
            Ok(nodes) => Ok(nodes
                .split(',')
                .filter(|n| !n.is_empty())
                .map(|n| {
                    if n.contains("://") {
                        n.to_owned()
                    } else {
                        format!("redis://{n}")
                    }
                })
                .collect()),
            Err(_) => start_cluster(),
        }),
    )
}

/// Why the single-server tests cannot run, if they cannot.
pub fn unavailable() -> Option<String> {
    server_url()
        .is_none()
        .then(|| "no Redis server (set PRESENCE_REDIS_URL or install redis-server)".into())
}

/// Why the cluster tests cannot run, if they cannot.
pub fn cluster_unavailable() -> Option<String> {
    cluster_nodes()
        .is_none()
        .then(|| "no Redis Cluster (set PRESENCE_REDIS_CLUSTER or install redis-server)".into())
}

/// A key prefix no other test of any process uses.
pub fn unique_prefix(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "t:{label}:{}:{}:{nanos}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The config of a test store on the shared server, with a prefix of its
/// own named after `label`. Check [`unavailable`] first.
pub fn store_config(label: &str) -> RedisConfig {
    let url = server_url().expect("a test server (check testing::unavailable first)");
    let mut config = RedisConfig::new(url);
    config.key_prefix = unique_prefix(label);
    config
}

/// The config of a test store on the shared cluster. Check
/// [`cluster_unavailable`] first.
pub fn cluster_config(label: &str) -> RedisConfig {
    let nodes = cluster_nodes().expect("a test cluster (check testing::cluster_unavailable first)");
    let mut config = RedisConfig::cluster(nodes);
    config.key_prefix = unique_prefix(label);
    config
}

/// A free loopback port.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn binary() -> Result<PathBuf, String> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            Command::new("sh")
                .args(["-c", "command -v redis-server"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        })
        .ok_or_else(|| "no redis-server binary (apt-get install redis-server)".to_owned())
}

/// A throwaway `redis-server` on a loopback port, in a directory of its own;
/// stopped (and its files removed) when dropped or when the process exits.
/// Tests that restart or stop a server start one of their own.
pub struct Server {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Server {
    /// Starts a server with no persistence.
    pub fn start() -> Result<Self, String> {
        Self::start_with(free_port()?, &[])
    }

    /// Starts a server on `port` with extra `redis-server` arguments.
    pub fn start_with(port: u16, extra: &[&str]) -> Result<Self, String> {
        let dir =
            std::env::temp_dir().join(format!("presence-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut server = Self {
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = binary()?;
        // The watchdog shell ends the server once this process is gone.
        let mut args = vec![
            format!("--port {}", self.port),
            "--bind 127.0.0.1".into(),
            "--save ''".into(),
            if DURABLE.load(Ordering::Relaxed) {
                "--appendonly yes --appendfsync everysec".into()
            } else {
                "--appendonly no".into()
            },
            format!("--dir '{}'", self.dir.display()),
            "--protected-mode no".into(),
        ];
        args.extend(self.extra.iter().cloned());
        let script = format!(
            "'{bin}' {args} > '{log}' 2>&1 & pid=$!; \
             while [ -d /proc/{parent} ] && kill -0 $pid 2>/dev/null; do sleep 1; done; \
             kill -9 $pid 2>/dev/null; wait $pid",
            bin = bin.display(),
            args = args.join(" "),
            log = self.dir.join("server.log").display(),
            parent = std::process::id(),
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        Err(format!("redis-server did not start within 20 s: {log}"))
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once (`kill -9` of its watchdog group) without
    /// saving: what a crash or a restart without persistence loses.
    pub fn stop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Stops the server and starts it again on the same port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a server answers PING on `port`, over a plain socket.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
    if socket.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    socket.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Runs `redis-cli` with `args`, returning its output.
pub fn redis_cli(args: &[&str]) -> Result<String, String> {
    let output = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run redis-cli: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "redis-cli {args:?} failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The shared cluster: three masters that live as long as the process.
fn start_cluster() -> Result<Vec<String>, String> {
    let cluster = Cluster::start()?;
    let nodes = cluster.nodes();
    std::mem::forget(cluster);
    Ok(nodes)
}

/// Three masters (no replicas) on free loopback ports, joined into a
/// Redis Cluster; stopped when dropped.
pub struct Cluster {
    servers: Vec<Server>,
}

impl Cluster {
    /// Starts the three servers and creates the cluster.
    pub fn start() -> Result<Self, String> {
        let mut servers = Vec::new();
        for _ in 0..3 {
            let port = free_port()?;
            servers.push(Server::start_with(
                port,
                &[
                    "--cluster-enabled yes",
                    &format!("--cluster-config-file nodes-{port}.conf"),
                    "--cluster-node-timeout 2000",
                ],
            )?);
        }
        let ports: Vec<String> = servers.iter().map(|s| s.port().to_string()).collect();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend([
            "--cluster-replicas".into(),
            "0".into(),
            "--cluster-yes".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_cli(&args)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = ports.iter().all(|p| {
                redis_cli(&["-p", p, "cluster", "info"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                return Ok(Self { servers });
            }
            if Instant::now() > deadline {
                return Err("the test cluster did not reach cluster_state:ok within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The nodes' URLs.
    pub fn nodes(&self) -> Vec<String> {
        self.servers.iter().map(Server::url).collect()
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.iter().map(Server::port).collect()
    }
}

/// Writes, behind the store's back, what damage or a hand edit could leave:
/// for `conformance::Damage`.
pub mod damage {
    use presence_core::{PresenceKey, Timestamp, Topic};
    use redis::Value;

    use crate::RedisStore;

    async fn run(store: &RedisStore, cmd: redis::Cmd) -> Value {
        let mut conn = store.raw_connection().expect("an open store");
        cmd.query_async(&mut conn)
            .await
            .expect("a damaging command")
    }

    /// Overwrites the stored meta of `key` (present) with text that is not
    /// JSON, keeping its times and its member's other connections.
    pub async fn corrupt_meta(store: &RedisStore, key: &PresenceKey) {
        let keys = store.raw_keys().topic(&key.topic);
        let mut get = redis::cmd("HGET");
        get.arg(&keys[0]).arg(key.member.as_str());
        let Value::BulkString(old) = run(store, get).await else {
            panic!("{key} is not stored");
        };
        let mut parts: Vec<Vec<u8>> = old.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
        let at = parts
            .iter()
            .step_by(2)
            .position(|c| c == key.connection.as_bytes())
            .unwrap_or_else(|| panic!("{key} is not stored"));
        let (joined, token, _) = crate::wire::stored_value(&parts[2 * at + 1]);
        parts[2 * at + 1] = format!("{joined}:{token}:not json {{").into_bytes();
        let mut set = redis::cmd("HSET");
        set.arg(&keys[0])
            .arg(key.member.as_str())
            .arg(parts.join(&0));
        run(store, set).await;
    }

    /// Stores an entry with empty (invalid) member and connection ids in
    /// `topic`, as the join script would (index included).
    pub async fn plant_invalid_ids(store: &RedisStore, topic: &Topic, last_seen_at: Timestamp) {
        let keys = store.raw_keys().topic(topic);
        let seen = last_seen_at.as_millis();
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&keys[0])
            .arg("")
            .arg(format!("\0{seen}:1:{{}}"));
        pipe.cmd("ZADD").arg(&keys[1]).arg(seen).arg("\0");
        pipe.cmd("ZADD")
            .arg(&keys[3])
            .arg("LT")
            .arg(seen)
            .arg(topic.as_str());
        let mut conn = store.raw_connection().expect("an open store");
        let _: Value = pipe.query_async(&mut conn).await.expect("planting a row");
    }
}

/// The pub/sub channel `store` publishes `topic`'s events on (for tests that
/// find the shard serving it).
pub fn channel(store: &crate::RedisStore, topic: &presence_core::Topic) -> String {
    store.raw_keys().channel(topic)
}

/// Whether tests that start servers of their own can run: a `redis-server`
/// binary is needed. `None` (after a loud message) when not, unless
/// `PRESENCE_REQUIRE_REDIS=1`.
pub fn can_start_servers() -> bool {
    found("fault", &binary().map(|_| ())).is_some()
}
