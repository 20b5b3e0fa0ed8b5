//! Where a join's time goes on a Redis server: the store's coalesced joins
//! against the plain-command baselines of the criterion bench
//! (`benches::redis_baseline`), 64 tasks joining fresh keys over 1,000
//! topics, on the same server, in turns within one run.
//!
//! For each: joins per second; the server's CPU time per join, of its main
//! thread (which runs every command and script) and of the whole process
//! (`INFO cpu`); this process's CPU time per join (`/proc/self/stat`); and
//! for the store the scripts' own time per join (`INFO commandstats`).
//! Redis runs commands on one thread, so one second divided by the main
//! thread's time per join bounds the rate any client reaches (the
//! "ceiling" column), and the ratio of two variants' main-thread times
//! bounds how far apart their rates can be once the server is the limit.
//!
//! Run with `cargo run --release -p benches --bin redis_join_cost [joins]`
//! (default 200,000 joins per turn, three turns); the server is the test
//! harness's (append-only file, fsync every second) or
//! `PRESENCE_REDIS_URL`.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use benches::redis_baseline::Plain;
use benches::{fresh_keys, join_concurrently, runtime};
use presence_core::PresenceStore;
use presence_redis::{RedisConfig, RedisStore, redis, testing};

const TOPICS: usize = 1_000;
const TASKS: usize = 64;

/// A number from an `INFO` answer.
fn field(info: &str, name: &str) -> f64 {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The script time (µs) recorded for `EVALSHA` since the last reset.
fn script_micros(stats: &str) -> f64 {
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
        .and_then(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("usec="))?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// This process's CPU time (user + system), from `/proc/self/stat`.
fn own_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat (Linux only)");
    let after_name = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after
    // the name; in clock ticks of 1/100 s.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// The server's CPU seconds: (main thread, whole process).
async fn server_cpu(admin: &mut redis::aio::MultiplexedConnection) -> (f64, f64) {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(admin)
        .await
        .unwrap();
    (
        field(&info, "used_cpu_user_main_thread") + field(&info, "used_cpu_sys_main_thread"),
        field(&info, "used_cpu_user") + field(&info, "used_cpu_sys"),
    )
}

#[derive(Default)]
struct Totals {
    joins: usize,
    wall: Duration,
    main: f64,
    server: f64,
    client: Duration,
    script: f64,
}

fn main() {
    let joins: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("a number of joins"))
        .unwrap_or(200_000);
    testing::prefer_durable_server();
    let url = testing::server_url().expect("a Redis server");
    let rt = runtime();
    let mut config = RedisConfig::new(url.clone());
    config.key_prefix = testing::unique_prefix("join_cost");
    let store: Arc<dyn PresenceStore> = Arc::new(rt.block_on(RedisStore::connect(config)).unwrap());
    let prefix = testing::unique_prefix("join_cost_baseline");
    let (own, shared, mut admin) = rt.block_on(async {
        let mut own = Vec::new();
        for _ in 0..TASKS {
            own.push(Plain::connect(&url, &[]).await);
        }
        let shared = vec![Plain::connect(&url, &[]).await];
        let admin = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        (own, shared, admin)
    });
    let names = [
        "store, coalesced",
        "plain commands, a connection per task (the baseline)",
        "plain commands, one multiplexed connection",
    ];
    let next = AtomicUsize::new(0);
    let run = |variant: usize, n: usize| {
        let keys = fresh_keys(&next, n, TOPICS);
        rt.block_on(async {
            match variant {
                0 => join_concurrently(store.clone(), keys, TASKS).await,
                1 => Plain::join_concurrently(&own, &prefix, &keys).await,
                _ => Plain::join_concurrently(&shared, &prefix, &keys).await,
            }
        })
    };
    // Warm up: connections, scripts, topics' keys.
    for variant in 0..names.len() {
        run(variant, joins / 10);
    }
    let mut totals: Vec<Totals> = names.iter().map(|_| Totals::default()).collect();
    for turn in 1..=3 {
        for (variant, total) in totals.iter_mut().enumerate() {
            let (main0, server0) = rt.block_on(server_cpu(&mut admin));
            let _: () = rt
                .block_on(
                    redis::cmd("CONFIG")
                        .arg("RESETSTAT")
                        .query_async(&mut admin),
                )
                .unwrap();
            let client0 = own_cpu();
            let wall = run(variant, joins);
            let client = own_cpu() - client0;
            let (main1, server1) = rt.block_on(server_cpu(&mut admin));
            let stats: String = rt
                .block_on(
                    redis::cmd("INFO")
                        .arg("commandstats")
                        .query_async(&mut admin),
                )
                .unwrap();
            total.joins += joins;
            total.wall += wall;
            total.main += main1 - main0;
            total.server += server1 - server0;
            total.client += client;
            total.script += script_micros(&stats);
            println!(
                "turn {turn}, {}: {:.1}k joins/s",
                names[variant],
                joins as f64 / wall.as_secs_f64() / 1e3
            );
        }
    }
    println!();
    println!(
        "| variant | joins/s | server main thread, µs per join | ceiling (1 s / that) | server process, µs per join | this process, µs per join | scripts, µs per join |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let per_join = |seconds: f64, joins: usize| seconds * 1e6 / joins as f64;
    for (name, t) in names.iter().zip(&totals) {
        let main = per_join(t.main, t.joins);
        println!(
            "| {name} | {:.1}k | {main:.1} | {:.1}k/s | {:.1} | {:.1} | {} |",
            t.joins as f64 / t.wall.as_secs_f64() / 1e3,
            1e3 / main,
            per_join(t.server, t.joins),
            per_join(t.client.as_secs_f64(), t.joins),
            if t.script > 0.0 {
                format!("{:.1}", t.script / t.joins as f64)
            } else {
                "-".to_owned()
            },
        );
    }
    let rate = |t: &Totals| t.joins as f64 / t.wall.as_secs_f64();
    println!();
    println!(
        "store / baseline: {:.2}x the rate; the baseline's main-thread time per join / the store's: {:.2}x (the most the store's rate can reach over the baseline's once the server is the limit)",
        rate(&totals[0]) / rate(&totals[1]),
        totals[1].main / totals[0].main,
    );
    rt.block_on(store.close()).unwrap();
}
