//! The SQLite backend of `presence`: not built yet (see the SQLite backend issue).
