-- Per-topic counts, kept exact by triggers so that every writer (any
-- process, any statement, DELETE ... RETURNING sweeps included) keeps them
-- right, and count reads one row.
CREATE TABLE {p}topics (
    topic       TEXT    NOT NULL PRIMARY KEY,
    members     INTEGER NOT NULL,
    connections INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO {p}topics (topic, members, connections)
SELECT topic, COUNT(DISTINCT member), COUNT(*) FROM {p}entries GROUP BY topic;

CREATE TRIGGER {p}entries_counted_in AFTER INSERT ON {p}entries
BEGIN
    INSERT INTO {p}topics (topic, members, connections)
    VALUES (
        NEW.topic,
        NOT EXISTS (
            SELECT 1 FROM {p}entries
            WHERE topic = NEW.topic AND member = NEW.member AND connection <> NEW.connection
        ),
        1
    )
    ON CONFLICT (topic) DO UPDATE
    SET connections = connections + 1, members = members + excluded.members;
END;

CREATE TRIGGER {p}entries_counted_out AFTER DELETE ON {p}entries
BEGIN
    UPDATE {p}topics
    SET connections = connections - 1,
        members = members - NOT EXISTS (
            SELECT 1 FROM {p}entries WHERE topic = OLD.topic AND member = OLD.member
        )
    WHERE topic = OLD.topic;
    DELETE FROM {p}topics WHERE topic = OLD.topic AND connections = 0;
END;
