-- One row per (topic, member, connection). Ids compare byte for byte
-- (SQLite's default BINARY collation), as the contract orders them.
CREATE TABLE {p}entries (
    topic        TEXT    NOT NULL,
    member       TEXT    NOT NULL,
    connection   TEXT    NOT NULL,
    meta         TEXT    NOT NULL,
    joined_at    INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    PRIMARY KEY (topic, member, connection)
) WITHOUT ROWID;

-- sweep_all deletes by age without scanning every entry.
CREATE INDEX {p}entries_by_last_seen ON {p}entries (last_seen_at);

-- disconnect and topics_of find a member's entries without scanning.
CREATE INDEX {p}entries_by_member ON {p}entries (member, connection);
