//! The web edge under load, in three processes on loopback: one server on
//! SQLite, one process of SSE viewers (raw HTTP/1.1 clients), and this
//! one driving joins and leaves through `POST /update`.
//!
//! ```sh
//! cargo bench -p presence-axum --bench web_edge            # 1,000 and 10,000 viewers
//! cargo bench -p presence-axum --bench web_edge -- 1000    # the viewer counts to run
//! ```
//!
//! For each viewer count, with coalescing (100 ms) and without, in one
//! run: members join and leave one channel at 200 changes a second for
//! 10 s; it reports the SSE messages delivered per second (all viewers),
//! p50 and p99 of the time from a join's HTTP answer to the last viewer
//! seeing it, and the server's resident memory per open stream. Then
//! `/update` requests per second from 64 concurrent clients each
//! heartbeating 10 channels.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::request::Parts;
use presence::{ChannelConfig, Channels, MemberId, Topic};
use presence_axum::{Config, PresenceWeb, RateLimit};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CHANNEL: &str = "room/bench";
const CHANGES_PER_SECOND: u64 = 200;
const DRIVE: Duration = Duration::from_secs(10);
/// Members joined in one run, numbered; each stays 2 s.
const MEMBERS: usize = (CHANGES_PER_SECOND / 2) as usize * 12;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runtime = |threads: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("a runtime")
    };
    match args.first().map(String::as_str) {
        Some("server") => runtime(2).block_on(server(args[1].parse().expect("coalesce ms"))),
        Some("viewers") => runtime(2).block_on(viewers(
            args[1].parse().expect("an address"),
            args[2].parse().expect("a viewer count"),
        )),
        _ => {
            let counts: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
            let counts = if counts.is_empty() {
                vec![1_000, 10_000]
            } else {
                counts
            };
            runtime(2).block_on(orchestrate(counts));
        }
    }
}

// ---- the server process ----

async fn server(coalesce_ms: u64) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = presence::connect(&url).await.expect("the SQLite store");
    let channels = Channels::new(store)
        .channel("room/", |_topic: Topic| async {
            Some(ChannelConfig::public())
        })
        .channel("hb/", |_topic: Topic| async {
            Some(ChannelConfig::public())
        });
    let config = Config {
        coalesce: Duration::from_millis(coalesce_ms),
        // The heartbeat bench sends as fast as it can.
        rate_limit: RateLimit {
            updates: 1_000_000,
            per: Duration::from_secs(1),
        },
        ..Config::default()
    };
    let identify = |parts: &Parts| {
        let user = parts
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        std::future::ready(user.and_then(|u| MemberId::new(u).ok()))
    };
    let web = PresenceWeb::with_config(channels, identify, config).expect("a valid config");
    let app: Router = Router::new().nest("/presence", web.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}

// ---- a minimal HTTP/1.1 client ----

struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Self {
        let socket = TcpStream::connect(addr).await.expect("connect");
        socket.set_nodelay(true).unwrap();
        Self {
            reader: BufReader::new(socket),
        }
    }

    /// Sends a request and reads the head; returns the status and the
    /// content length (`None`: chunked).
    async fn request(&mut self, head: &str, body: &[u8]) -> (u16, Option<usize>) {
        let socket = self.reader.get_mut();
        socket.write_all(head.as_bytes()).await.expect("send");
        socket.write_all(body).await.expect("send");
        let mut line = String::new();
        self.reader.read_line(&mut line).await.expect("status");
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = None;
        loop {
            line.clear();
            self.reader.read_line(&mut line).await.expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse().ok();
            }
        }
        (status, length)
    }

    async fn post_update(&mut self, user: &str, body: &str) -> u16 {
        let head = format!(
            "POST /presence/update HTTP/1.1\r\nhost: bench\r\nx-user: {user}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let (status, length) = self.request(&head, body.as_bytes()).await;
        let mut rest = vec![0; length.unwrap_or(0)];
        self.reader.read_exact(&mut rest).await.expect("body");
        status
    }

    /// The next chunk of a chunked body; `None` at its end.
    async fn chunk(&mut self, into: &mut Vec<u8>) -> Option<()> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(line.trim(), 16).ok()?;
        let start = into.len();
        into.resize(start + size + 2, 0);
        self.reader.read_exact(&mut into[start..]).await.ok()?;
        into.truncate(start + size);
        (size > 0).then_some(())
    }
}

// ---- the viewers process ----

/// Per member number: how many viewers saw it, and when the last did.
struct Seen {
    viewers: Vec<AtomicU32>,
    last_ns: Vec<AtomicU64>,
    messages: AtomicU64,
    states: AtomicU64,
    ready: AtomicU32,
    /// Count messages (during the drive only).
    counting: AtomicBool,
    /// Record who saw which member (from the drive's start to the report).
    recording: AtomicBool,
}

/// The member numbers a frame's data names (`{"id":"m123"`), in one pass.
fn member_numbers(data: &[u8], mut each: impl FnMut(usize)) {
    let pattern = b"{\"id\":\"m";
    for (at, _) in data.iter().enumerate().filter(|(_, b)| **b == b'{') {
        let Some(rest) = data[at..].strip_prefix(&pattern[..]) else {
            continue;
        };
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if let Some(n) = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|t| t.parse().ok())
        {
            each(n);
        }
    }
}

async fn viewer(addr: SocketAddr, seen: Arc<Seen>) {
    let mut connection = Connection::open(addr).await;
    let head = format!(
        "GET /presence/events?channel={CHANNEL} HTTP/1.1\r\nhost: bench\r\nx-user: viewer\r\n\r\n"
    );
    let (status, _) = connection.request(&head, &[]).await;
    assert_eq!(status, 200, "opening a stream");
    let mut mine = [0u64; MEMBERS / 64 + 1];
    let mut buffer = Vec::new();
    let mut ready = false;
    while connection.chunk(&mut buffer).await.is_some() {
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buffer.drain(..end + 2).collect();
            let Some(data_at) = frame.windows(6).position(|w| w == b"data: ") else {
                continue; // an id line or a keep-alive
            };
            let is_state = frame.starts_with(b"event: state");
            if !ready {
                ready = true;
                seen.ready.fetch_add(1, Ordering::Relaxed);
            }
            if !seen.recording.load(Ordering::Relaxed) {
                continue;
            }
            if seen.counting.load(Ordering::Relaxed) {
                seen.messages.fetch_add(1, Ordering::Relaxed);
            }
            if is_state {
                seen.states.fetch_add(1, Ordering::Relaxed);
            }
            let data = &frame[data_at..];
            // Joins come first in a diff's data; a state lists everyone.
            let joins_end = if is_state {
                data.len()
            } else {
                data.windows(9)
                    .position(|w| w == b"\"leaves\":")
                    .unwrap_or(data.len())
            };
            let at = now_ns();
            member_numbers(&data[..joins_end], |n| {
                if n < MEMBERS && mine[n / 64] & (1 << (n % 64)) == 0 {
                    mine[n / 64] |= 1 << (n % 64);
                    seen.viewers[n].fetch_add(1, Ordering::Relaxed);
                    seen.last_ns[n].fetch_max(at, Ordering::Relaxed);
                }
            });
        }
    }
}

async fn viewers(addr: SocketAddr, count: usize) {
    let seen = Arc::new(Seen {
        viewers: (0..MEMBERS).map(|_| AtomicU32::new(0)).collect(),
        last_ns: (0..MEMBERS).map(|_| AtomicU64::new(0)).collect(),
        messages: AtomicU64::new(0),
        states: AtomicU64::new(0),
        ready: AtomicU32::new(0),
        counting: AtomicBool::new(false),
        recording: AtomicBool::new(false),
    });
    for _ in 0..count {
        tokio::spawn(viewer(addr, seen.clone()));
        tokio::task::yield_now().await;
    }
    while (seen.ready.load(Ordering::Relaxed) as usize) < count {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("ready");
    // The driver says when to count and when to report, on stdin.
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line).await.unwrap();
    seen.recording.store(true, Ordering::Relaxed);
    seen.counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    line.clear();
    stdin.read_line(&mut line).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    seen.counting.store(false, Ordering::Relaxed);
    line.clear();
    stdin.read_line(&mut line).await.unwrap();
    seen.recording.store(false, Ordering::Relaxed);
    let messages = seen.messages.load(Ordering::Relaxed);
    println!(
        "messages {messages} seconds {seconds:.3} states {}",
        seen.states.load(Ordering::Relaxed)
    );
    for n in 0..MEMBERS {
        let v = seen.viewers[n].load(Ordering::Relaxed);
        if v > 0 {
            println!("seen {n} {v} {}", seen.last_ns[n].load(Ordering::Relaxed));
        }
    }
    println!("end");
}

// ---- the driver ----

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn spawn_self(args: &[String]) -> tokio::process::Child {
    let exe = std::env::current_exe().expect("this binary");
    tokio::process::Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn a bench process")
}

struct RunResult {
    changes_per_second: f64,
    messages_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    seen_by_all: usize,
    joins: usize,
    states: u64,
    rss_per_stream_kib: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(viewer_count: usize, coalesce_ms: u64) -> RunResult {
    let mut server = spawn_self(&["server".into(), coalesce_ms.to_string()]);
    let server_pid = server.id().expect("a pid");
    let mut server_out = BufReader::new(server.stdout.take().unwrap()).lines();
    let addr: SocketAddr = server_out
        .next_line()
        .await
        .unwrap()
        .expect("the address")
        .parse()
        .unwrap();
    // A first viewer opens the channel's feed; the memory before the
    // crowd arrives is then the baseline.
    let mut warm = Connection::open(addr).await;
    warm.post_update("warmup", r#"{"client_id":"c","present":["room/bench"]}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(server_pid);
    let mut viewers = spawn_self(&["viewers".into(), addr.to_string(), viewer_count.to_string()]);
    let mut viewer_in = viewers.stdin.take().unwrap();
    let mut viewer_out = BufReader::new(viewers.stdout.take().unwrap()).lines();
    assert_eq!(
        viewer_out.next_line().await.unwrap().as_deref(),
        Some("ready")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_streams = rss_kib(server_pid);
    viewer_in.write_all(b"count\n").await.unwrap();

    // 200 changes a second: member i joins at tick i, leaves 2 s later.
    let answered: Arc<Vec<AtomicU64>> = Arc::new((0..MEMBERS).map(|_| AtomicU64::new(0)).collect());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, bool)>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut senders = Vec::new();
    for _ in 0..16 {
        let rx = rx.clone();
        let answered = answered.clone();
        senders.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr).await;
            loop {
                let Some((n, join)) = rx.lock().await.recv().await else {
                    return;
                };
                let body = if join {
                    format!(r#"{{"client_id":"c","present":["{CHANNEL}"]}}"#)
                } else {
                    format!(r#"{{"client_id":"c","leave":["{CHANNEL}"]}}"#)
                };
                let status = connection.post_update(&format!("m{n}"), &body).await;
                assert_eq!(status, 200);
                if join {
                    answered[n].store(now_ns(), Ordering::Relaxed);
                }
            }
        }));
    }
    let tick = Duration::from_secs(2) / CHANGES_PER_SECOND as u32;
    let mut interval = tokio::time::interval(tick);
    let mut present = VecDeque::new();
    let started = Instant::now();
    let mut joined = 0;
    while started.elapsed() < DRIVE && joined < MEMBERS {
        interval.tick().await;
        tx.send((joined, true)).unwrap();
        present.push_back(joined);
        joined += 1;
        if present.len() > (CHANGES_PER_SECOND as usize) {
            tx.send((present.pop_front().unwrap(), false)).unwrap();
        }
    }
    drop(tx);
    for sender in senders {
        sender.await.unwrap();
    }
    // Every change answered: the rate the server really took them at.
    let changes_per_second = (2 * joined - present.len()) as f64 / started.elapsed().as_secs_f64();
    viewer_in.write_all(b"stop\n").await.unwrap();
    // Let the last diffs arrive.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    viewer_in.write_all(b"report\n").await.unwrap();
    let mut messages = 0.0;
    let mut states = 0;
    let mut latencies = Vec::new();
    while let Some(line) = viewer_out.next_line().await.unwrap() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("messages") => {
                messages = words[1].parse::<f64>().unwrap() / words[3].parse::<f64>().unwrap();
                states = words[5].parse().unwrap();
            }
            Some("seen") => {
                let n: usize = words[1].parse().unwrap();
                let by: usize = words[2].parse().unwrap();
                let last: u64 = words[3].parse().unwrap();
                let answer = answered[n].load(Ordering::Relaxed);
                if by == viewer_count && answer > 0 {
                    latencies.push(last.saturating_sub(answer) as f64 / 1e6);
                }
            }
            Some("end") => break,
            _ => {}
        }
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    drop(viewers);
    drop(server);
    RunResult {
        changes_per_second,
        messages_per_second: messages,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        seen_by_all: latencies.len(),
        joins: joined,
        states,
        rss_per_stream_kib: rss_streams.saturating_sub(rss_before) as f64 / viewer_count as f64,
    }
}

async fn heartbeats() -> f64 {
    let mut server = spawn_self(&["server".into(), "100".into()]);
    let mut server_out = BufReader::new(server.stdout.take().unwrap()).lines();
    let addr: SocketAddr = server_out
        .next_line()
        .await
        .unwrap()
        .expect("the address")
        .parse()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..64 {
        let (done, stop) = (done.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr).await;
            let channels: Vec<String> = (0..10).map(|i| format!("\"hb/{c}-{i}\"")).collect();
            let body = format!(
                r#"{{"client_id":"tab-{c}","present":[{}]}}"#,
                channels.join(",")
            );
            // The first request joins; the rest are heartbeats.
            connection.post_update(&format!("u{c}"), &body).await;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(connection.post_update(&format!("u{c}"), &body).await, 200);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (from, at) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rate = (done.load(Ordering::Relaxed) - from) as f64 / at.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    drop(server);
    rate
}

async fn orchestrate(counts: Vec<usize>) {
    println!(
        "web edge: one SQLite server, SSE viewers of one channel, {CHANGES_PER_SECOND} joins and leaves a second for {DRIVE:?}"
    );
    println!(
        "| viewers | coalescing | changes/s answered | messages/s delivered | join→last viewer p50 | p99 | joins seen by all | states sent (lag) | server RSS per stream |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &count in &counts {
        for coalesce_ms in [100, 0] {
            let r = run(count, coalesce_ms).await;
            let label = if coalesce_ms == 0 {
                "off".to_owned()
            } else {
                format!("{coalesce_ms} ms")
            };
            println!(
                "| {count} | {label} | {:.0} | {:.0} | {:.1} ms | {:.1} ms | {}/{} | {} | {:.1} KiB |",
                r.changes_per_second,
                r.messages_per_second,
                r.p50_ms,
                r.p99_ms,
                r.seen_by_all,
                r.joins,
                r.states,
                r.rss_per_stream_kib
            );
        }
    }
    let rate = heartbeats().await;
    println!(
        "/update heartbeats, 64 concurrent clients x 10 channels: {rate:.0} requests/s ({:.0} channel heartbeats/s)",
        rate * 10.0
    );
}
