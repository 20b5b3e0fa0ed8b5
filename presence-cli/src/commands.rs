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

/// A command line checked to the last argument, before any store is opened.
enum Action {
    Join {
        key: PresenceKey,
        meta: Meta,
        max_members: Option<u32>,
    },
    Leave {
        topic: Topic,
        member: MemberId,
        connection: Option<ConnectionId>,
    },
    Touch(PresenceKey),
    Members(Topic),
    Count(Topic),
    Topics(MemberId),
    Sweep {
        older_than: Duration,
        topic: Option<Topic>,
    },
    Sweeper {
        ttl: Duration,
        every: Duration,
    },
    Watch {
        topic: Topic,
        poll: Duration,
    },
    Migrate,
    Demo(demo::Demo),
}

impl Action {
    /// Validates every argument, naming the one that is wrong.
    fn check(command: Command) -> presence::Result<Self> {
        Ok(match command {
            Command::Join {
                topic,
                member,
                connection,
                meta,
                max_members,
            } => Action::Join {
                key: PresenceKey::new(topic, member, connection)?,
                meta: match meta {
                    Some(text) => Meta::from_json(&text)?,
                    None => Meta::new(),
                },
                max_members,
            },
            Command::Leave {
                topic,
                member,
                connection,
            } => Action::Leave {
                topic: Topic::new(topic)?,
                member: MemberId::new(member)?,
                connection: connection.map(ConnectionId::new).transpose()?,
            },
            Command::Touch {
                topic,
                member,
                connection,
            } => Action::Touch(PresenceKey::new(topic, member, connection)?),
            Command::Members { topic } => Action::Members(Topic::new(topic)?),
            Command::Count { topic } => Action::Count(Topic::new(topic)?),
            Command::Topics { member } => Action::Topics(MemberId::new(member)?),
            Command::Sweep { older_than, topic } => Action::Sweep {
                older_than,
                topic: topic.map(Topic::new).transpose()?,
            },
            Command::Sweeper { ttl, every } => {
                let ttl = check_positive("ttl", ttl)?;
                Action::Sweeper {
                    ttl,
                    every: check_positive("every", every.unwrap_or(ttl / 4))?,
                }
            }
            Command::Watch { topic, poll } => Action::Watch {
                topic: Topic::new(topic)?,
                poll: check_positive("poll", poll)?,
            },
            Command::Migrate => Action::Migrate,
            Command::Demo(args) => Action::Demo(args.check()?),
        })
    }
}

/// Runs the parsed command line: checks it, opens the store, runs the
/// command, and closes the store (committing what is queued) before
/// returning, whether the command succeeded or not.
pub async fn run(cli: Cli) -> CliResult<ExitCode> {
    let out = Printer { json: cli.json };
    let mut shutdown = Shutdown::listen()?;
    let action = Action::check(cli.command)?;
    if let Action::Migrate = action {
        presence::migrate(&cli.store).await?;
        out.migrated(&cli.store)?;
        return Ok(ExitCode::SUCCESS);
    }
    let store = presence::connect(&cli.store).await?;
    let result = perform(action, &store, &cli.store, out, &mut shutdown).await;
    let closed = store.close().await;
    let code = result?;
    closed?;
    Ok(code)
}

async fn perform(
    action: Action,
    store: &Arc<dyn PresenceStore>,
    store_url: &str,
    out: Printer,
    shutdown: &mut Shutdown,
) -> CliResult<ExitCode> {
    match action {
        Action::Join {
            key,
            meta,
            max_members,
        } => {
            let joined = match max_members {
                Some(max) => store.join_limited(&key, meta, max).await?,
                None => store.join(&key, meta).await?,
            };
            out.joined(&joined)?;
        }
        Action::Leave {
            topic,
            member,
            connection,
        } => {
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
        Action::Touch(key) => {
            let present = store.touch(&key).await?;
            out.touched(&key, present)?;
            if !present {
                return Ok(ExitCode::FAILURE);
            }
        }
        Action::Members(topic) => out.members(&store.members(&topic).await?)?,
        Action::Count(topic) => out.counts(&store.count(&topic).await?)?,
        Action::Topics(member) => out.topics(&store.topics_of(&member).await?)?,
        Action::Sweep { older_than, topic } => {
            let departures = match topic {
                Some(topic) => store.sweep_topic_expired(&topic, older_than).await?,
                None => store.sweep_expired(older_than).await?,
            };
            out.departures(&departures, "expired")?;
        }
        Action::Sweeper { ttl, every } => {
            out.note(&format!(
                "sweeping {} every {} for entries not seen for {}; Ctrl-C or SIGTERM stops",
                presence::redact(store_url),
                humantime::format_duration(every),
                humantime::format_duration(ttl)
            ));
            // A failing sweep is logged as a warning each time and retried.
            let sweeper = Sweeper::new(store.clone(), ttl)?
                .every(every)?
                .on_departures(move |gone| {
                    // Printing to a closed pipe is the reader's business.
                    let _ = out.departure_lines(&gone, "expired");
                })
                .spawn();
            shutdown.requested().await;
            sweeper.close().await;
        }
        Action::Watch { topic, poll } => {
            let live = LiveMembers::follow(store.clone(), topic.clone(), poll).await?;
            let mut updates = live.updates();
            loop {
                tokio::select! {
                    update = updates.next() => match update {
                        Some(update) => out.live_update(&topic, &update)?,
                        None => break,
                    },
                    () = shutdown.requested() => break,
                }
            }
            live.close().await;
        }
        // Handled by `run` without opening the store.
        Action::Migrate => out.migrated(store_url)?,
        Action::Demo(args) => {
            return demo::run(store.clone(), store_url, args, out, shutdown).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C (SIGINT) and SIGTERM, listened to from the start of the command,
/// so both end a running command cleanly (its store closed before the
/// process exits) however early they come.
pub struct Shutdown {
    #[cfg(unix)]
    signals: (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
}

impl Shutdown {
    /// Starts listening; from now on the signals no longer kill the process.
    pub fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                signals: (
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::terminate())?,
                ),
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Resolves at the first of the signals.
    pub async fn requested(&mut self) {
        #[cfg(unix)]
        {
            let (interrupt, terminate) = &mut self.signals;
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Refuses a zero duration for `field`.
pub fn check_positive(field: &'static str, value: Duration) -> presence::Result<Duration> {
    if value.is_zero() {
        return Err(presence::Error::invalid(field, "must be longer than 0s"));
    }
    Ok(value)
}
