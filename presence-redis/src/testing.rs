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
//!
//! [`TlsServer`] starts a server that speaks only TLS, with a certificate
//! from a throwaway CA, for the `rediss://` tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
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
    /// Set when the server speaks only TLS on `port`.
    tls: Option<TlsPaths>,
    child: Option<Child>,
}

/// The PEM files of a TLS server, in its directory.
struct TlsPaths {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// The PEM text of a TLS server's certificate, its key and its CA.
struct TlsPems {
    cert: String,
    key: String,
    ca: String,
}

impl Server {
    /// Starts a server with no persistence.
    pub fn start() -> Result<Self, String> {
        Self::start_with(free_port()?, &[])
    }

    /// Starts a server on `port` with extra `redis-server` arguments.
    pub fn start_with(port: u16, extra: &[&str]) -> Result<Self, String> {
        Self::create(port, extra, None)
    }

    /// Makes the server's directory (with the PEM files of `tls`, if any)
    /// and starts it.
    fn create(port: u16, extra: &[&str], tls: Option<TlsPems>) -> Result<Self, String> {
        let dir =
            std::env::temp_dir().join(format!("presence-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tls = match tls {
            Some(pems) => {
                let write = |name: &str, pem: &str| {
                    let path = dir.join(name);
                    std::fs::write(&path, pem)
                        .map(|()| path)
                        .map_err(|e| format!("{}: {e}", dir.join(name).display()))
                };
                Some(TlsPaths {
                    cert: write("server.crt", &pems.cert)?,
                    key: write("server.key", &pems.key)?,
                    ca: write("ca.crt", &pems.ca)?,
                })
            }
            None => None,
        };
        let mut server = Self {
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = binary()?;
        let listen = match &self.tls {
            None => format!("--port {}", self.port),
            Some(tls) => format!(
                "--port 0 --tls-port {} --tls-cert-file '{}' --tls-key-file '{}' \
                 --tls-ca-cert-file '{}' --tls-auth-clients no",
                self.port,
                tls.cert.display(),
                tls.key.display(),
                tls.ca.display()
            ),
        };
        // The watchdog shell ends the server once this process is gone, and
        // then removes its directory (a server kept for the whole process
        // is never dropped).
        let mut args = vec![
            listen,
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
            "'{bin}' {args} > '{log}' 2>&1 & pid=$!; echo $pid > '{pidfile}'; \
             while [ -d /proc/{parent} ] && kill -0 $pid 2>/dev/null; do sleep 1; done; \
             kill -9 $pid 2>/dev/null; wait $pid; \
             [ -d /proc/{parent} ] || rm -rf '{dir}'",
            bin = bin.display(),
            args = args.join(" "),
            log = self.dir.join("server.log").display(),
            pidfile = self.dir.join("server.pid").display(),
            dir = self.dir.display(),
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

    /// The `redis-cli` arguments that reach this server.
    fn cli_args(&self) -> Vec<String> {
        let mut args = vec![
            "-h".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            self.port.to_string(),
        ];
        if let Some(tls) = &self.tls {
            args.extend([
                "--tls".to_owned(),
                "--cacert".to_owned(),
                tls.ca.display().to_string(),
            ]);
        }
        args
    }

    /// Whether the server answers PING (over TLS when it speaks TLS).
    fn answers(&self) -> bool {
        if self.tls.is_none() {
            return ping(self.port);
        }
        let mut args = self.cli_args();
        args.push("PING".into());
        Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "PONG")
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.answers() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        Err(format!("redis-server did not start within 20 s: {log}"))
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once (`kill -9` of its watchdog group) without
    /// saving: what a crash or a restart without persistence loses.
    pub fn stop(&mut self) {
        let mut args = self.cli_args();
        args.extend(["shutdown".into(), "nosave".into()]);
        let _ = Command::new("redis-cli")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            // The watchdog ends with the server; should the shutdown not have
            // reached it, the server is killed rather than waited for forever.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None))
                && let Ok(pid) = std::fs::read_to_string(self.dir.join("server.pid"))
            {
                let _ = Command::new("kill")
                    .args(["-9", pid.trim()])
                    .stderr(Stdio::null())
                    .status();
            }
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

/// A throwaway `redis-server` that speaks only TLS (`--port 0 --tls-port`),
/// with a server certificate signed by a CA made for it alone (by `rcgen`),
/// and no client certificates asked for. Its PEM files live in its
/// directory; it is stopped like a [`Server`].
pub struct TlsServer {
    server: Server,
}

impl TlsServer {
    /// Starts one whose certificate names `localhost` and `127.0.0.1`.
    pub fn start() -> Result<Self, String> {
        Self::start_for(&["localhost", "127.0.0.1"])
    }

    /// Starts one whose certificate names `names` (host names or IP
    /// addresses) and nothing else.
    pub fn start_for(names: &[&str]) -> Result<Self, String> {
        let pems = certificates(names).map_err(|e| format!("cannot make certificates: {e}"))?;
        Ok(Self {
            server: Server::create(free_port()?, &[], Some(pems))?,
        })
    }

    /// `rediss://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        self.url_via("127.0.0.1")
    }

    /// `rediss://HOST:PORT/`: the server reached by another name for it.
    pub fn url_via(&self, host: &str) -> String {
        format!("rediss://{host}:{}/", self.server.port)
    }

    /// Its port: TLS only, no plaintext port is open.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The PEM file of the CA that signed the server's certificate, for
    /// [`RedisConfig::tls_root_cert`].
    pub fn ca_file(&self) -> &Path {
        &self.server.tls.as_ref().expect("a TLS server").ca
    }

    /// The CA's PEM text.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_file()).expect("the CA file of a running TLS server")
    }
}

/// A started [`TlsServer`] whose certificate names `names`; `None` (after a
/// loud message) when none can start here, unless `PRESENCE_REQUIRE_REDIS=1`
/// makes that fail the test.
pub fn tls_server(names: &[&str]) -> Option<TlsServer> {
    match binary().and_then(|_| TlsServer::start_for(names)) {
        Ok(server) => Some(server),
        Err(why) if required() => panic!("Redis TLS tests cannot run: {why}"),
        Err(why) => {
            eprintln!("SKIPPED: Redis TLS tests cannot run here: {why}");
            None
        }
    }
}

/// A new CA, and a certificate it signed for `names`, with the key.
fn certificates(names: &[&str]) -> Result<TlsPems, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "presence-redis test CA");
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, *first);
    }
    Ok(TlsPems {
        cert: params.signed_by(&key, &issuer)?.pem(),
        key: key.serialize_pem(),
        ca: ca_pem,
    })
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

/// `CLIENT LIST` as the server answers it on `store`'s command connection:
/// one line per client, with its address (`addr`), the server's address it
/// connected to (`laddr`) and its subscriptions (`sub`, `ssub`).
pub async fn client_list(store: &crate::RedisStore) -> presence_core::Result<String> {
    let mut conn = store.raw_connection()?;
    let value: redis::Value = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .map_err(crate::conn::backend)?;
    match value {
        redis::Value::BulkString(text) => Ok(String::from_utf8_lossy(&text).into_owned()),
        redis::Value::VerbatimString { text, .. } | redis::Value::SimpleString(text) => Ok(text),
        other => Err(presence_core::Error::backend(
            crate::conn::BACKEND,
            format!("CLIENT LIST answered {other:?}"),
        )),
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
