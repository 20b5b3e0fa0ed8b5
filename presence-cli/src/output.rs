//! Human and JSON output. Human output is for people; `--json` prints one
//! document per command (one per line for commands that keep running).

use std::io::{self, Write};
use std::process::ExitCode;

use presence::{Counts, Departure, Joined, LiveUpdate, Member, PresenceKey, Timestamp, Topic};
use serde::Serialize;
use serde_json::json;

/// Prints results as text or JSON.
#[derive(Copy, Clone, Debug)]
pub struct Printer {
    /// `--json` was given.
    pub json: bool,
}

/// Prints `error: ...` with every cause, on one line (a driver's top line
/// is often only "db error"), and returns the failure exit code.
pub fn fail(error: &(dyn std::error::Error + 'static)) -> ExitCode {
    let line = match error.downcast_ref::<presence::Error>() {
        Some(error) => error.chain().to_string(),
        None => {
            let mut line = error.to_string();
            let mut cause = error.source();
            while let Some(error) = cause {
                let text = error.to_string();
                if !line.ends_with(&text) {
                    line = format!("{line}: {text}");
                }
                cause = error.source();
            }
            line
        }
    };
    let _ = writeln!(io::stderr(), "error: {}", line.replace('\n', " "));
    ExitCode::FAILURE
}

/// A timestamp as RFC 3339 with milliseconds.
pub fn time(at: Timestamp) -> String {
    humantime::format_rfc3339_millis(at.to_system_time()).to_string()
}

fn print(line: impl std::fmt::Display) -> io::Result<()> {
    writeln!(io::stdout().lock(), "{line}")
}

fn print_json(value: &impl Serialize) -> io::Result<()> {
    print(serde_json::to_string(value).map_err(io::Error::other)?)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn counts_text(counts: &Counts) -> String {
    format!(
        "{}, {}",
        plural(counts.members, "member", "members"),
        plural(counts.connections, "connection", "connections")
    )
}

impl Printer {
    /// A note for the person running the command, on stderr.
    pub fn note(&self, text: &str) {
        if !self.json {
            let _ = writeln!(io::stderr(), "{text}");
        }
    }

    /// The result of `join`.
    pub fn joined(&self, joined: &Joined) -> io::Result<()> {
        if self.json {
            return print_json(joined);
        }
        let key = &joined.entry.key;
        let what = match (joined.was_present, joined.first_for_member) {
            (true, _) => "re-joined",
            (false, true) => "joined (first connection of the member)",
            (false, false) => "joined (another connection of the member)",
        };
        print(format_args!(
            "{} {}/{} {what}",
            key.topic, key.member, key.connection
        ))
    }

    /// The result of `leave` or `sweep`.
    pub fn departures(&self, departures: &[Departure], verb: &str) -> io::Result<()> {
        if self.json {
            return print_json(&departures);
        }
        if departures.is_empty() {
            return print(format_args!("nothing {verb}"));
        }
        self.departure_lines(departures, verb)?;
        let members = departures.iter().filter(|d| d.last_for_member).count();
        print(format_args!(
            "{} {verb}; {} gone",
            plural(departures.len() as u64, "connection", "connections"),
            plural(members as u64, "member", "members")
        ))
    }

    /// One line per departure (the sweeper's running output).
    pub fn departure_lines(&self, departures: &[Departure], verb: &str) -> io::Result<()> {
        for departure in departures {
            if self.json {
                print_json(departure)?;
                continue;
            }
            let key = &departure.entry.key;
            let gone = if departure.last_for_member {
                ", member gone"
            } else {
                ""
            };
            print(format_args!(
                "{} {}/{} {verb} (last seen {}){gone}",
                key.topic,
                key.member,
                key.connection,
                time(departure.entry.last_seen_at)
            ))?;
        }
        Ok(())
    }

    /// The result of `touch`.
    pub fn touched(&self, key: &PresenceKey, present: bool) -> io::Result<()> {
        if self.json {
            return print_json(&json!({ "key": key, "present": present }));
        }
        if present {
            print(format_args!(
                "{} {}/{} touched",
                key.topic, key.member, key.connection
            ))
        } else {
            print(format_args!(
                "{} {}/{} is not present; join it again",
                key.topic, key.member, key.connection
            ))
        }
    }

    /// The result of `members`: a table, one row per connection.
    pub fn members(&self, members: &[Member]) -> io::Result<()> {
        if self.json {
            return print_json(&members);
        }
        let header = ["MEMBER", "CONNECTION", "JOINED", "LAST SEEN", "META"];
        let mut rows: Vec<[String; 5]> = Vec::new();
        for member in members {
            for connection in &member.connections {
                rows.push([
                    member.member.to_string(),
                    connection.connection.to_string(),
                    time(connection.joined_at),
                    time(connection.last_seen_at),
                    connection.meta.to_json(),
                ]);
            }
        }
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 5]| {
            let mut text = String::new();
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    text.push_str(cell);
                } else {
                    text.push_str(&format!("{cell:<width$}  "));
                }
            }
            text
        };
        print(line(header))?;
        for row in &rows {
            print(line(row.each_ref().map(String::as_str)))?;
        }
        let connections = rows.len() as u64;
        print(format_args!(
            "{}",
            counts_text(&Counts {
                members: members.len() as u64,
                connections
            })
        ))
    }

    /// The result of `count`.
    pub fn counts(&self, counts: &Counts) -> io::Result<()> {
        if self.json {
            return print_json(counts);
        }
        print(counts_text(counts))
    }

    /// The result of `topics`.
    pub fn topics(&self, topics: &[Topic]) -> io::Result<()> {
        if self.json {
            return print_json(&topics);
        }
        for topic in topics {
            print(topic)?;
        }
        Ok(())
    }

    /// One update of `watch`.
    pub fn live_update(&self, topic: &Topic, update: &LiveUpdate) -> io::Result<()> {
        if self.json {
            return print_json(update);
        }
        match update {
            LiveUpdate::State { members, counts } => {
                let names: Vec<&str> = members.iter().map(|m| m.member.as_str()).collect();
                print(format_args!(
                    "{topic}: {} [{}]",
                    counts_text(counts),
                    names.join(", ")
                ))
            }
            LiveUpdate::Diff(diff) => {
                for member in &diff.joins {
                    print(format_args!(
                        "+ {} ({})",
                        member.member,
                        plural(member.connections.len() as u64, "connection", "connections")
                    ))?;
                }
                for member in &diff.leaves {
                    print(format_args!("- {}", member.member))?;
                }
                print(format_args!("  {topic}: {}", counts_text(&diff.counts)))
            }
        }
    }

    /// The result of `migrate`.
    pub fn migrated(&self, url: &str) -> io::Result<()> {
        if self.json {
            return print_json(&json!({ "store": presence::redact(url), "migrated": true }));
        }
        print(format_args!(
            "the schema of {} is up to date",
            presence::redact(url)
        ))
    }
}
