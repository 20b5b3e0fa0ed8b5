//! Reading the store's rows back, robust to damage: a row whose meta
//! cannot be read reads with `{}` (with a warning); a row whose ids are not
//! valid ids is skipped (with a warning), so one bad row never fails a read
//! or the removal of other rows.

use presence_core::{Departure, Entry, Meta, PresenceKey, Reason, Result, Timestamp, Topic};
use tokio_postgres::Row;

use crate::errors::db;

/// The entry in the first six columns of `row` (topic, member, connection,
/// meta, joined_at, last_seen_at); `None` when its ids are not valid.
pub(crate) fn entry(row: &Row) -> Result<Option<Entry>> {
    let text = |i: usize| row.try_get::<_, &str>(i).map_err(db);
    let (topic, member, connection) = (text(0)?, text(1)?, text(2)?);
    let key = match PresenceKey::new(topic, member, connection) {
        Ok(key) => key,
        Err(error) => {
            tracing::warn!(
                topic = topic.escape_debug().to_string(),
                member = member.escape_debug().to_string(),
                connection = connection.escape_debug().to_string(),
                %error,
                "a stored entry has ids that are not valid; it is skipped"
            );
            return Ok(None);
        }
    };
    Ok(Some(Entry {
        meta: Meta::from_stored_json(text(3)?, &key),
        key,
        joined_at: Timestamp::from_millis(row.try_get(4).map_err(db)?),
        last_seen_at: Timestamp::from_millis(row.try_get(5).map_err(db)?),
    }))
}

/// The readable entries of `rows`.
pub(crate) fn entries(rows: &[Row]) -> Result<Vec<Entry>> {
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        entries.extend(entry(row)?);
    }
    Ok(entries)
}

/// A departure from a row of the schema's `departure` type; `None` for a
/// removed row whose ids are not valid (it is gone, and reported nowhere).
pub(crate) fn departure(row: &Row, reason: Reason) -> Result<Option<Departure>> {
    let Some(entry) = entry(row)? else {
        return Ok(None);
    };
    Ok(Some(Departure {
        entry,
        reason,
        last_for_member: row.try_get(6).map_err(db)?,
    }))
}

/// The reportable departures of `rows`.
pub(crate) fn departures(rows: &[Row], reason: Reason) -> Result<Vec<Departure>> {
    let mut departures = Vec::with_capacity(rows.len());
    for row in rows {
        departures.extend(departure(row, reason)?);
    }
    Ok(departures)
}

/// The valid topics in the first column of `rows`.
pub(crate) fn topics(rows: &[Row]) -> Result<Vec<Topic>> {
    let mut topics = Vec::with_capacity(rows.len());
    for row in rows {
        let text: &str = row.try_get(0).map_err(db)?;
        match Topic::new(text) {
            Ok(topic) => topics.push(topic),
            Err(error) => tracing::warn!(
                topic = text.escape_debug().to_string(),
                %error,
                "a stored topic is not a valid topic; it is skipped"
            ),
        }
    }
    Ok(topics)
}
