//! What subscriptions cost on a SQLite file store: idle ones little,
//! dropped ones nothing (a counting allocator, so a binary of its own).

#[allow(dead_code)]
mod support;

conformance::footprint_suite!(support::SqliteFile::new());
