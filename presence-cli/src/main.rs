//! `presence`: inspect a presence store, run its sweeper, watch a topic, run
//! the demo. See the crate README.

#![forbid(unsafe_code)]

mod commands;
mod demo;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Who is here right now: inspect and run a presence store.
#[derive(Debug, Parser)]
#[command(name = "presence", version)]
pub struct Cli {
    /// The store: memory://, sqlite://PATH, sqlite::memory:,
    /// postgres://USER@HOST/DB[?schema=NAME], a key=value Postgres string,
    /// redis://HOST:PORT/DB (port and database optional), rediss://... or
    /// redis+cluster://H1,H2/
    /// (parameters: see the README). Never printed with its password.
    #[arg(
        long,
        env = "PRESENCE_STORE",
        default_value = "sqlite://presence.db",
        global = true
    )]
    pub store: String,
    /// Print JSON (one document, or one per line for running commands).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join (or re-join) one connection of a member to a topic.
    Join {
        /// The topic, e.g. /chat/42.
        topic: String,
        /// The member, usually a user id.
        member: String,
        /// The connection: a tab, a socket, a device.
        #[arg(long, default_value = "cli")]
        connection: String,
        /// The entry's meta, a JSON object.
        #[arg(long)]
        meta: Option<String>,
        /// Refuse the join if a new member would make the topic exceed this.
        #[arg(long)]
        max_members: Option<u32>,
    },
    /// Remove one connection, or with no --connection all of the member's.
    Leave {
        /// The topic.
        topic: String,
        /// The member.
        member: String,
        /// Only this connection.
        #[arg(long)]
        connection: Option<String>,
    },
    /// Heartbeat one connection; exits 1 if it is not present.
    Touch {
        /// The topic.
        topic: String,
        /// The member.
        member: String,
        /// The connection.
        #[arg(long, default_value = "cli")]
        connection: String,
    },
    /// List a topic's members and their connections.
    Members {
        /// The topic.
        topic: String,
    },
    /// Count a topic's members and connections.
    Count {
        /// The topic.
        topic: String,
    },
    /// List the topics a member is present in.
    Topics {
        /// The member.
        member: String,
    },
    /// Remove entries not seen for a while, once.
    Sweep {
        /// Remove entries last seen longer ago than this (60s, 5m, 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
        /// Only this topic (default: every topic).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Run a sweeper until interrupted: the daemon to run beside the app.
    Sweeper {
        /// Remove entries not seen for this long.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Sweep this often (default: a quarter of the TTL).
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Option<Duration>,
    },
    /// Print a topic's joins and leaves as they happen, from any process.
    Watch {
        /// The topic.
        topic: String,
        /// Also re-read the members this often, to see writes of other
        /// processes on stores whose events stay in-process (SQLite).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
        poll: Duration,
    },
    /// Create or upgrade the store's schema.
    Migrate,
    /// Simulate a busy room: users with several tabs joining, heartbeating,
    /// dropping off and being swept, with live counts and a summary.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Warnings of the stores and helpers (a failing sweep, a lost
    // connection) go to stderr; RUST_LOG changes what is shown, e.g.
    // RUST_LOG=presence_sqlite=debug.
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::WARN.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return output::fail(&error),
    };
    let code = match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(error) => output::fail(&*error),
    };
    // The store was closed by `run`; nothing is left running.
    drop(runtime);
    code
}
