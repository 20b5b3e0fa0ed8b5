//! One function per subcommand. Every argument is validated before the store
//! is opened, so bad input changes nothing (not even creating a file).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use presence::{
    ConnectionId, LiveMembers, MemberId, Meta, PresenceKey, PresenceStore, PresenceStoreExt,
    Sweeper, Topic,
};

use crate::output::Printer;
use crate::{Cli, Command, demo};

/// What a subcommand fails with: printed as one line by `main`.
pub type CliResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> CliResult<ExitCode> {
    let out = Printer { json: cli.json };
    let store_url = cli.store;
    match cli.command {
        Command::Join {
            topic,
            member,
            connection,
            meta,
            max_members,
        } => {
            let key = PresenceKey::new(topic, member, connection)?;
            let meta = match meta {
                Some(text) => Meta::from_json(&text)?,
                None => Meta::new(),
            };
            let store = open(&store_url).await?;
            let joined = match max_members {
                Some(max) => store.join_limited(&key, meta, max).await?,
                None => store.join(&key, meta).await?,
            };
            out.joined(&joined)?;
        }
        Command::Leave {
            topic,
            member,
            connection,
        } => {
            let topic = Topic::new(topic)?;
            let member = MemberId::new(member)?;
            let connection = connection.map(ConnectionId::new).transpose()?;
            let store = open(&store_url).await?;
            let departures = match connection {
                Some(connection) => {
                    let key = PresenceKey {
                        topic,
                        member,
                        connection,
                    };
                    store.leave(&key).await?.into_iter().collect()
                }
                None => store.leave_member(&topic, &member).await?,
            };
            out.departures(&departures, "left")?;
        }
        Command::Touch {
            topic,
            member,
            connection,
        } => {
            let key = PresenceKey::new(topic, member, connection)?;
            let store = open(&store_url).await?;
            let present = store.touch(&key).await?;
            out.touched(&key, present)?;
            if !present {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Members { topic } => {
            let topic = Topic::new(topic)?;
            let store = open(&store_url).await?;
            out.members(&store.members(&topic).await?)?;
        }
        Command::Count { topic } => {
            let topic = Topic::new(topic)?;
            let store = open(&store_url).await?;
            out.counts(&store.count(&topic).await?)?;
        }
        Command::Topics { member } => {
            let member = MemberId::new(member)?;
            let store = open(&store_url).await?;
            out.topics(&store.topics_of(&member).await?)?;
        }
        Command::Sweep { older_than, topic } => {
            let topic = topic.map(Topic::new).transpose()?;
            let store = open(&store_url).await?;
            let departures = match topic {
                Some(topic) => store.sweep_topic_expired(&topic, older_than).await?,
                None => store.sweep_expired(older_than).await?,
            };
            out.departures(&departures, "expired")?;
        }
        Command::Sweeper { ttl, every } => {
            check_positive("ttl", ttl)?;
            let every = every.unwrap_or(ttl / 4);
            check_positive("every", every)?;
            let store = open(&store_url).await?;
            out.note(&format!(
                "sweeping {} every {} for entries not seen for {}; Ctrl-C stops",
                crate::output::redact(&store_url),
                humantime::format_duration(every),
                humantime::format_duration(ttl)
            ));
            let sweeper = Sweeper::new(store, ttl)
                .every(every)
                .on_departures(move |gone| {
                    // Printing to a closed pipe is the reader's business.
                    let _ = out.departure_lines(&gone, "expired");
                });
            let _running = sweeper.spawn();
            tokio::signal::ctrl_c().await?;
        }
        Command::Watch { topic, poll } => {
            let topic = Topic::new(topic)?;
            check_positive("poll", poll)?;
            let store = open(&store_url).await?;
            let live = LiveMembers::start_refreshing(store, topic.clone(), poll).await?;
            let mut updates = live.updates();
            loop {
                tokio::select! {
                    update = updates.next() => match update {
                        Some(update) => out.live_update(&topic, &update)?,
                        None => break,
                    },
                    stop = tokio::signal::ctrl_c() => {
                        stop?;
                        break;
                    }
                }
            }
        }
        Command::Migrate => {
            let _store = open(&store_url).await?;
            out.migrated(&store_url)?;
        }
        Command::Demo(args) => {
            let args = args.check()?;
            let store = open(&store_url).await?;
            return demo::run(store, &store_url, args, out).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the store, creating or upgrading its schema.
async fn open(url: &str) -> CliResult<Arc<dyn PresenceStore>> {
    Ok(presence::connect(url).await?)
}

/// Refuses a zero duration for `field`.
pub fn check_positive(field: &'static str, value: Duration) -> presence::Result<()> {
    if value.is_zero() {
        return Err(presence::Error::invalid(field, "must be longer than 0s"));
    }
    Ok(())
}
