//! `presence demo`: a busy room, simulated with the runtime helpers.
//!
//! Each simulated user opens and closes tabs at random. An open tab is a
//! [`Tracked`] guard (joined, heartbeated, left when closed); some tabs
//! "crash" instead ([`Tracked::abandon`]) and are removed by the [`Sweeper`]
//! after the TTL; some change their meta (typing or not). A [`LiveMembers`]
//! follows the room, and the demo ends by checking that it agrees with the
//! store.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use presence::{
    LiveMembers, Meta, PresenceKey, PresenceStore, Sweeper, Timestamp, Topic, Tracked, Tracker,
    serde_json::json,
};
use serde::Serialize;

use crate::commands::{CliResult, Shutdown, check_positive};
use crate::output::Printer;

/// The demo's knobs.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated users.
    #[arg(long, default_value_t = 200)]
    users: u32,
    /// Most tabs a user has open at once.
    #[arg(long, default_value_t = 3)]
    tabs: u32,
    /// How long the room runs.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Entries not heartbeated for this long are swept.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    ttl: Duration,
    /// The room; it is emptied before and after the run.
    #[arg(long, default_value = "demo/room")]
    topic: String,
}

/// [`DemoArgs`], checked.
#[derive(Debug)]
pub struct Demo {
    users: u32,
    tabs: u32,
    duration: Duration,
    ttl: Duration,
    topic: Topic,
}

impl DemoArgs {
    /// Checks every knob, naming the one that is wrong.
    pub fn check(self) -> presence::Result<Demo> {
        if self.users == 0 {
            return Err(presence::Error::invalid("users", "must be at least 1"));
        }
        if self.tabs == 0 {
            return Err(presence::Error::invalid("tabs", "must be at least 1"));
        }
        check_positive("duration", self.duration)?;
        check_positive("ttl", self.ttl)?;
        Ok(Demo {
            users: self.users,
            tabs: self.tabs,
            duration: self.duration,
            ttl: self.ttl,
            topic: Topic::new(self.topic)?,
        })
    }
}

/// What the users did, counted as they do it.
#[derive(Default)]
struct Tally {
    joins: AtomicU64,
    leaves: AtomicU64,
    updates: AtomicU64,
    crashes: AtomicU64,
    swept: AtomicU64,
    failures: AtomicU64,
}

impl Tally {
    fn writes(&self) -> u64 {
        self.joins.load(Ordering::Relaxed)
            + self.leaves.load(Ordering::Relaxed)
            + self.updates.load(Ordering::Relaxed)
    }
}

/// The summary printed at the end (`--json` prints it as one object).
#[derive(Serialize)]
struct Summary {
    store: String,
    topic: String,
    users: u32,
    max_tabs: u32,
    seconds: f64,
    joins: u64,
    leaves: u64,
    meta_updates: u64,
    crashed_tabs: u64,
    swept: u64,
    failed_calls: u64,
    writes_per_second: f64,
    peak_members: u64,
    peak_connections: u64,
    live_view_matches_store: bool,
}

/// Runs the demo on `store` and prints progress and the summary.
pub async fn run(
    store: Arc<dyn PresenceStore>,
    store_url: &str,
    demo: Demo,
    out: Printer,
    shutdown: &mut Shutdown,
) -> CliResult<ExitCode> {
    let topic = demo.topic.clone();
    empty_room(&store, &topic).await?;
    let tally = Arc::new(Tally::default());
    let live = LiveMembers::start(store.clone(), topic.clone()).await?;
    let sweeper = {
        let tally = tally.clone();
        Sweeper::new(store.clone(), demo.ttl)?
            .on_departures(move |gone| {
                tally.swept.fetch_add(gone.len() as u64, Ordering::Relaxed);
            })
            .spawn()
    };
    let tracker = Tracker::new(store.clone(), demo.ttl)?;
    out.note(&format!(
        "{} users with up to {} tabs each in {topic} for {}, TTL {}; each user acts every \
         50 to 400 ms, so the rate below is the simulation's pace, not the store's limit \
         (see BENCHMARKS.md)",
        demo.users,
        demo.tabs,
        humantime::format_duration(demo.duration),
        humantime::format_duration(demo.ttl)
    ));

    let started = Instant::now();
    let deadline = started + demo.duration;
    // Set by Ctrl-C / SIGTERM: the users close their tabs and the demo ends
    // early, with its summary.
    let stopping = Arc::new(AtomicBool::new(false));
    let mut users = tokio::task::JoinSet::new();
    for user in 0..demo.users {
        let tracker = tracker.clone();
        let topic = topic.clone();
        let tally = tally.clone();
        let until = Until {
            deadline,
            stopping: stopping.clone(),
        };
        users.spawn(simulate_user(tracker, topic, user, demo.tabs, until, tally));
    }

    let mut peak = (0, 0);
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    let mut last_writes = 0;
    while Instant::now() < deadline {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.requested() => {
                out.note("stopping: closing every tab");
                stopping.store(true, Ordering::Relaxed);
                break;
            }
        }
        let counts = live.counts();
        peak = (peak.0.max(counts.members), peak.1.max(counts.connections));
        let writes = tally.writes();
        out.note(&format!(
            "{:>5.1}s  {:>5} members  {:>5} connections  {:>7} writes/s  {:>5} swept",
            started.elapsed().as_secs_f64(),
            counts.members,
            counts.connections,
            writes - last_writes,
            tally.swept.load(Ordering::Relaxed),
        ));
        last_writes = writes;
    }
    // Every user closes its tabs (the guards leave) before returning.
    while let Some(done) = users.join_next().await {
        done?;
    }
    let seconds = started.elapsed().as_secs_f64();
    sweeper.close().await;
    // Every guard has left or was abandoned; this waits for nothing more,
    // but is what an app does on shutdown.
    tracker.close().await;

    // Crashed tabs are still in the room until swept; the live view must
    // agree with the store on exactly who that is.
    live.settled().await;
    let stored = store.members(&topic).await?;
    let matches = presence::Member::same_presence(&live.members(), &stored);
    live.close().await;

    let summary = Summary {
        store: presence::redact(store_url),
        topic: topic.to_string(),
        users: demo.users,
        max_tabs: demo.tabs,
        seconds,
        joins: tally.joins.load(Ordering::Relaxed),
        leaves: tally.leaves.load(Ordering::Relaxed),
        meta_updates: tally.updates.load(Ordering::Relaxed),
        crashed_tabs: tally.crashes.load(Ordering::Relaxed),
        swept: tally.swept.load(Ordering::Relaxed),
        failed_calls: tally.failures.load(Ordering::Relaxed),
        writes_per_second: tally.writes() as f64 / seconds,
        peak_members: peak.0,
        peak_connections: peak.1,
        live_view_matches_store: matches,
    };
    empty_room(&store, &topic).await?;
    print_summary(&summary, out)?;
    if !matches {
        return Err("the live member list disagrees with the store".into());
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes whatever an earlier, interrupted run left in the room.
async fn empty_room(store: &Arc<dyn PresenceStore>, topic: &Topic) -> presence::Result<()> {
    store
        .sweep(topic, Timestamp::from_millis(i64::MAX))
        .await
        .map(drop)
}

/// When the users stop: at the deadline, or when the demo is interrupted.
struct Until {
    deadline: Instant,
    stopping: Arc<AtomicBool>,
}

impl Until {
    fn running(&self) -> bool {
        Instant::now() < self.deadline && !self.stopping.load(Ordering::Relaxed)
    }
}

/// One user: opens and closes tabs at random until the deadline, then
/// closes the rest.
async fn simulate_user(
    tracker: Tracker,
    topic: Topic,
    user: u32,
    max_tabs: u32,
    until: Until,
    tally: Arc<Tally>,
) {
    let mut rng = fastrand::Rng::with_seed(u64::from(user));
    let member = format!("user-{user:04}");
    let mut tabs: Vec<Tracked> = Vec::new();
    let mut next_tab = 0u32;
    // Users arrive over the first second.
    tokio::time::sleep(Duration::from_millis(rng.u64(0..1000))).await;
    while until.running() {
        let roll = rng.u32(0..100);
        if tabs.len() < max_tabs as usize && (tabs.is_empty() || roll < 35) {
            let key = PresenceKey::new(topic.clone(), member.as_str(), format!("tab-{next_tab}"))
                .expect("demo ids are valid");
            next_tab += 1;
            match tracker.track(key, typing(false)).await {
                Ok(tab) => {
                    tally.joins.fetch_add(1, Ordering::Relaxed);
                    tabs.push(tab);
                }
                Err(_) => {
                    tally.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else if roll < 60 {
            let tab = &tabs[rng.usize(0..tabs.len())];
            match tab.update(typing(rng.bool())).await {
                Ok(_) => tally.updates.fetch_add(1, Ordering::Relaxed),
                Err(_) => tally.failures.fetch_add(1, Ordering::Relaxed),
            };
        } else if roll < 95 {
            let tab = tabs.swap_remove(rng.usize(0..tabs.len()));
            close(tab, &tally).await;
        } else {
            // The browser crashed: no leave; the sweeper will notice.
            tabs.swap_remove(rng.usize(0..tabs.len())).abandon();
            tally.crashes.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(50..400))).await;
    }
    for tab in tabs {
        close(tab, &tally).await;
    }
}

async fn close(tab: Tracked, tally: &Tally) {
    match tab.leave().await {
        Ok(_) => tally.leaves.fetch_add(1, Ordering::Relaxed),
        Err(_) => tally.failures.fetch_add(1, Ordering::Relaxed),
    };
}

fn typing(typing: bool) -> Meta {
    Meta::from_value(json!({ "typing": typing })).expect("a JSON object is valid meta")
}

fn print_summary(summary: &Summary, out: Printer) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if out.json {
        return writeln!(stdout, "{}", serde_json::to_string(summary)?);
    }
    writeln!(
        stdout,
        "demo on {} ({}): {} users, up to {} tabs each, {:.1}s",
        summary.store, summary.topic, summary.users, summary.max_tabs, summary.seconds
    )?;
    writeln!(
        stdout,
        "  {} joins, {} leaves, {} meta updates: {:.0} writes/s (plus heartbeats)",
        summary.joins, summary.leaves, summary.meta_updates, summary.writes_per_second
    )?;
    writeln!(
        stdout,
        "  {} tabs crashed, {} entries swept after the TTL, {} calls failed",
        summary.crashed_tabs, summary.swept, summary.failed_calls
    )?;
    writeln!(
        stdout,
        "  peak: {} members on {} connections",
        summary.peak_members, summary.peak_connections
    )?;
    writeln!(
        stdout,
        "  live member list matches the store: {}",
        if summary.live_view_matches_store {
            "yes"
        } else {
            "NO"
        }
    )
}
