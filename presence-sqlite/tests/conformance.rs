//! The whole conformance suite, unchanged, on SQLite: a file per store, and
//! in memory.

mod support;

mod file {
    conformance::suite!(super::support::SqliteFile::new());
}

mod memory {
    conformance::suite!(super::support::SqliteMemory);
}
