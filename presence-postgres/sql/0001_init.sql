-- Everything lives in the store's schema, {s}. Ids compare byte for byte
-- (COLLATE "C"), as the contract orders them. Meta is kept as the exact
-- JSON text the store was given.
CREATE TABLE {s}.entries (
    topic        text COLLATE "C" NOT NULL,
    member       text COLLATE "C" NOT NULL,
    connection   text COLLATE "C" NOT NULL,
    meta         text   NOT NULL,
    joined_at    bigint NOT NULL,
    last_seen_at bigint NOT NULL,
    PRIMARY KEY (topic, member, connection)
);
CREATE INDEX entries_by_last_seen ON {s}.entries (last_seen_at);
CREATE INDEX entries_by_member ON {s}.entries (member, connection);

-- Per-topic counts, so count reads one row.
CREATE TABLE {s}.topics (
    topic       text COLLATE "C" PRIMARY KEY,
    members     bigint NOT NULL,
    connections bigint NOT NULL
);

-- Every write to a topic holds the topic's transaction-level advisory lock,
-- so member transitions and counts are exact across processes. Taken in
-- one order (by hash) by every call, so calls over several topics never
-- deadlock.
CREATE FUNCTION {s}.lock_topics(p_topics text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    h integer;
BEGIN
    FOR h IN SELECT DISTINCT hashtext(t) FROM unnest(p_topics) AS t ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(hashtext('{s}'), h);
    END LOOP;
END $$;

CREATE FUNCTION {s}.entry_json(
    p_topic text, p_member text, p_connection text, p_meta text, p_joined bigint, p_seen bigint
) RETURNS json
LANGUAGE sql IMMUTABLE AS $$
    SELECT json_build_object(
        'key', json_build_object('topic', p_topic, 'member', p_member, 'connection', p_connection),
        'meta', p_meta::json,
        'joined_at', p_joined,
        'last_seen_at', p_seen)
$$;

-- Events go out with the transaction's commit, in commit order. A payload
-- over NOTIFY's limit becomes a resync for that topic.
CREATE FUNCTION {s}.notify(p_topic text, p_event json) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    payload text := json_build_object('topic', p_topic, 'event', p_event)::text;
BEGIN
    IF octet_length(payload) > 7900 THEN
        payload := json_build_object('topic', p_topic, 'event', json_build_object('type', 'resync'))::text;
    END IF;
    PERFORM pg_notify('{s}', payload);
END $$;

-- join and join_limited (p_max not null). Outcome: joined, rejoined, full.
CREATE FUNCTION {s}.join(
    p_topic text, p_member text, p_connection text, p_meta text, p_now bigint, p_max bigint
) RETURNS TABLE (r_outcome text, r_joined_at bigint, r_first boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_meta text;
    v_joined bigint;
    v_present boolean;
    v_members bigint;
BEGIN
    PERFORM {s}.lock_topics(ARRAY[p_topic]);
    SELECT e.meta, e.joined_at INTO v_meta, v_joined FROM {s}.entries e
    WHERE e.topic = p_topic AND e.member = p_member AND e.connection = p_connection;
    IF FOUND THEN
        UPDATE {s}.entries e SET meta = p_meta, last_seen_at = p_now
        WHERE e.topic = p_topic AND e.member = p_member AND e.connection = p_connection;
        IF v_meta IS DISTINCT FROM p_meta THEN
            PERFORM {s}.notify(p_topic, json_build_object('type', 'update',
                'entry', {s}.entry_json(p_topic, p_member, p_connection, p_meta, v_joined, p_now)));
        END IF;
        RETURN QUERY SELECT 'rejoined'::text, v_joined, false;
        RETURN;
    END IF;
    v_present := EXISTS (SELECT 1 FROM {s}.entries e WHERE e.topic = p_topic AND e.member = p_member);
    IF p_max IS NOT NULL AND NOT v_present THEN
        SELECT t.members INTO v_members FROM {s}.topics t WHERE t.topic = p_topic;
        IF coalesce(v_members, 0) >= p_max THEN
            RETURN QUERY SELECT 'full'::text, NULL::bigint, false;
            RETURN;
        END IF;
    END IF;
    INSERT INTO {s}.entries VALUES (p_topic, p_member, p_connection, p_meta, p_now, p_now);
    INSERT INTO {s}.topics AS t VALUES (p_topic, CASE WHEN v_present THEN 0 ELSE 1 END, 1)
    ON CONFLICT (topic) DO UPDATE
    SET members = t.members + excluded.members, connections = t.connections + 1;
    PERFORM {s}.notify(p_topic, json_build_object('type', 'join',
        'entry', {s}.entry_json(p_topic, p_member, p_connection, p_meta, p_now, p_now),
        'first_for_member', NOT v_present));
    RETURN QUERY SELECT 'joined'::text, p_now, NOT v_present;
END $$;

-- update: no row when the entry is absent.
CREATE FUNCTION {s}.update(
    p_topic text, p_member text, p_connection text, p_meta text, p_now bigint
) RETURNS TABLE (r_joined_at bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_joined bigint;
BEGIN
    UPDATE {s}.entries e SET meta = p_meta, last_seen_at = p_now
    WHERE e.topic = p_topic AND e.member = p_member AND e.connection = p_connection
    RETURNING e.joined_at INTO v_joined;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM {s}.notify(p_topic, json_build_object('type', 'update',
        'entry', {s}.entry_json(p_topic, p_member, p_connection, p_meta, v_joined, p_now)));
    RETURN QUERY SELECT v_joined;
END $$;

CREATE TYPE {s}.departure AS (
    topic text, member text, connection text, meta text,
    joined_at bigint, last_seen_at bigint, last_for_member boolean
);

-- What every removal shares: given the rows one call deleted (its topics
-- locked), fix the counts, emit the leaves and return the departures in the
-- contract's order, the last of each member that has nothing left flagged.
CREATE FUNCTION {s}.departed(p_rows {s}.entries[], p_reason text)
RETURNS SETOF {s}.departure
LANGUAGE plpgsql AS $$
DECLARE
    d record;
    v {s}.departure;
BEGIN
    IF p_rows IS NULL THEN
        RETURN;
    END IF;
    UPDATE {s}.topics t
    SET connections = t.connections - c.n, members = t.members - c.gone
    FROM (
        SELECT m.topic, sum(m.n) AS n, count(*) FILTER (WHERE m.gone) AS gone
        FROM (
            SELECT x.topic, x.member, count(*) AS n,
                NOT EXISTS (SELECT 1 FROM {s}.entries e WHERE e.topic = x.topic AND e.member = x.member) AS gone
            FROM unnest(p_rows) AS x
            GROUP BY x.topic, x.member
        ) AS m
        GROUP BY m.topic
    ) AS c
    WHERE t.topic = c.topic;
    DELETE FROM {s}.topics t
    WHERE t.topic IN (SELECT x.topic FROM unnest(p_rows) AS x) AND t.connections <= 0;
    FOR d IN
        SELECT x.*,
            (lead(x.member) OVER w IS DISTINCT FROM x.member OR lead(x.topic) OVER w IS DISTINCT FROM x.topic)
            AND NOT EXISTS (SELECT 1 FROM {s}.entries e WHERE e.topic = x.topic AND e.member = x.member)
            AS last
        FROM unnest(p_rows) AS x
        WINDOW w AS (ORDER BY x.topic, x.member, x.connection)
        ORDER BY x.topic, x.member, x.connection
    LOOP
        PERFORM {s}.notify(d.topic, json_build_object('type', 'leave',
            'departure', json_build_object(
                'entry', {s}.entry_json(d.topic, d.member, d.connection, d.meta, d.joined_at, d.last_seen_at),
                'reason', p_reason,
                'last_for_member', d.last)));
        v := (d.topic, d.member, d.connection, d.meta, d.joined_at, d.last_seen_at, d.last);
        RETURN NEXT v;
    END LOOP;
END $$;

CREATE FUNCTION {s}.leave(p_topic text, p_member text, p_connection text)
RETURNS SETOF {s}.departure LANGUAGE plpgsql AS $$
DECLARE
    v_rows {s}.entries[];
BEGIN
    PERFORM {s}.lock_topics(ARRAY[p_topic]);
    WITH d AS (
        DELETE FROM {s}.entries e
        WHERE e.topic = p_topic AND e.member = p_member AND e.connection = p_connection
        RETURNING e
    ) SELECT array_agg(d.e) INTO v_rows FROM d;
    RETURN QUERY SELECT * FROM {s}.departed(v_rows, 'left');
END $$;

CREATE FUNCTION {s}.leave_member(p_topic text, p_member text)
RETURNS SETOF {s}.departure LANGUAGE plpgsql AS $$
DECLARE
    v_rows {s}.entries[];
BEGIN
    PERFORM {s}.lock_topics(ARRAY[p_topic]);
    WITH d AS (
        DELETE FROM {s}.entries e WHERE e.topic = p_topic AND e.member = p_member RETURNING e
    ) SELECT array_agg(d.e) INTO v_rows FROM d;
    RETURN QUERY SELECT * FROM {s}.departed(v_rows, 'left');
END $$;

CREATE FUNCTION {s}.disconnect(p_member text, p_connection text)
RETURNS SETOF {s}.departure LANGUAGE plpgsql AS $$
DECLARE
    v_topics text[];
    v_rows {s}.entries[];
BEGIN
    v_topics := ARRAY(SELECT DISTINCT e.topic FROM {s}.entries e
                      WHERE e.member = p_member AND e.connection = p_connection);
    PERFORM {s}.lock_topics(v_topics);
    WITH d AS (
        DELETE FROM {s}.entries e
        WHERE e.member = p_member AND e.connection = p_connection AND e.topic = ANY (v_topics)
        RETURNING e
    ) SELECT array_agg(d.e) INTO v_rows FROM d;
    RETURN QUERY SELECT * FROM {s}.departed(v_rows, 'disconnected');
END $$;

-- sweep (p_topic given) and sweep_all (p_topic null).
CREATE FUNCTION {s}.sweep(p_topic text, p_older_than bigint)
RETURNS SETOF {s}.departure LANGUAGE plpgsql AS $$
DECLARE
    v_topics text[];
    v_rows {s}.entries[];
BEGIN
    IF p_topic IS NULL THEN
        v_topics := ARRAY(SELECT DISTINCT e.topic FROM {s}.entries e WHERE e.last_seen_at < p_older_than);
    ELSE
        v_topics := ARRAY[p_topic];
    END IF;
    PERFORM {s}.lock_topics(v_topics);
    WITH d AS (
        DELETE FROM {s}.entries e
        WHERE e.topic = ANY (v_topics) AND e.last_seen_at < p_older_than
        RETURNING e
    ) SELECT array_agg(d.e) INTO v_rows FROM d;
    RETURN QUERY SELECT * FROM {s}.departed(v_rows, 'expired');
END $$;
