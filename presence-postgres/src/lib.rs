//! The Postgres backend of `presence`: not built yet (see the Postgres backend issue).
