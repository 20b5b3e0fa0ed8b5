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
) WITH (fillfactor = 70);
-- No index on last_seen_at, on purpose: heartbeats change only that column,
-- so without an index on it (and with room left in each page) they are HOT
-- updates that write no index at all. sweep_all scans the table instead,
-- which a periodic sweeper can afford.
CREATE INDEX entries_by_member ON {s}.entries (member, connection);

-- Per-topic counts, so count reads one row. Rewritten by every join and
-- leave: half of each page is left free so those are HOT updates.
CREATE TABLE {s}.topics (
    topic       text COLLATE "C" PRIMARY KEY,
    members     bigint NOT NULL,
    connections bigint NOT NULL
) WITH (fillfactor = 50);

-- Every write to a topic holds the topic's transaction-level advisory lock,
-- so member transitions and counts are exact across processes. Taken in
-- one order (by hash) by every call, so calls over several topics never
-- deadlock.
CREATE FUNCTION {s}.lock_topics(p_topics text[]) RETURNS void
LANGUAGE sql AS $$
    SELECT count(pg_advisory_xact_lock(hashtext('{s}'), s.h))
    FROM (SELECT DISTINCT hashtext(t) AS h FROM unnest(p_topics) AS t ORDER BY 1 OFFSET 0) AS s
$$;

-- Events are not built here: each function returns what it did, and the
-- store turns that into events and NOTIFYs them in the same transaction
-- (so they go out on commit, in commit order), with the events' own serde.

-- join and join_limited (p_max not null). Outcome: joined, rejoined, full;
-- r_changed: a rejoin replaced the meta with a different one.
CREATE FUNCTION {s}.join(
    p_topic text, p_member text, p_connection text, p_meta text, p_now bigint, p_max bigint
) RETURNS TABLE (r_outcome text, r_joined_at bigint, r_first boolean, r_changed boolean)
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
        RETURN QUERY SELECT 'rejoined'::text, v_joined, false, v_meta IS DISTINCT FROM p_meta;
        RETURN;
    END IF;
    v_present := EXISTS (SELECT 1 FROM {s}.entries e WHERE e.topic = p_topic AND e.member = p_member);
    IF p_max IS NOT NULL AND NOT v_present THEN
        SELECT t.members INTO v_members FROM {s}.topics t WHERE t.topic = p_topic;
        IF coalesce(v_members, 0) >= p_max THEN
            RETURN QUERY SELECT 'full'::text, NULL::bigint, false, false;
            RETURN;
        END IF;
    END IF;
    INSERT INTO {s}.entries VALUES (p_topic, p_member, p_connection, p_meta, p_now, p_now);
    INSERT INTO {s}.topics AS t VALUES (p_topic, CASE WHEN v_present THEN 0 ELSE 1 END, 1)
    ON CONFLICT (topic) DO UPDATE
    SET members = t.members + excluded.members, connections = t.connections + 1;
    RETURN QUERY SELECT 'joined'::text, p_now, NOT v_present, false;
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
    RETURN QUERY SELECT v_joined;
END $$;

CREATE TYPE {s}.departure AS (
    topic text, member text, connection text, meta text,
    joined_at bigint, last_seen_at bigint, last_for_member boolean
);

-- What every removal shares: given the rows one call deleted (its topics
-- locked), fix the counts and return the departures in the contract's
-- order, the last of each member that has nothing left flagged.
CREATE FUNCTION {s}.departed(p_rows {s}.entries[])
RETURNS SETOF {s}.departure
LANGUAGE sql AS $$
    WITH removed AS (
        SELECT * FROM unnest(p_rows)
    ),
    -- Which touched members have nothing left: checked once per member.
    members AS (
        -- LATERAL ... LIMIT 1: one index probe per member (see join_set).
        SELECT g.topic, g.member, g.n, left_over.present IS NULL AS gone
        FROM (SELECT x.topic, x.member, count(*) AS n FROM removed x GROUP BY x.topic, x.member) AS g
        LEFT JOIN LATERAL (
            SELECT true AS present FROM {s}.entries e
            WHERE e.topic = g.topic AND e.member = g.member
            LIMIT 1
        ) AS left_over ON true
    ),
    per_topic AS (
        SELECT m.topic, sum(m.n) AS n, count(*) FILTER (WHERE m.gone) AS gone
        FROM members m GROUP BY m.topic
    ),
    recounted AS (
        UPDATE {s}.topics t SET connections = t.connections - c.n, members = t.members - c.gone
        FROM per_topic c WHERE t.topic = c.topic AND t.connections > c.n
    ),
    emptied AS (
        DELETE FROM {s}.topics t USING per_topic c WHERE t.topic = c.topic AND t.connections <= c.n
    ),
    flagged AS (
        SELECT x.topic, x.member, x.connection, x.meta, x.joined_at, x.last_seen_at,
            m.gone AND row_number() OVER (PARTITION BY x.topic, x.member ORDER BY x.connection DESC) = 1
                AS last
        FROM removed x
        JOIN members m ON m.topic = x.topic AND m.member = x.member
    )
    SELECT f.topic, f.member, f.connection, f.meta, f.joined_at, f.last_seen_at, f.last
    FROM flagged f
    ORDER BY f.topic, f.member, f.connection
$$;

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
    RETURN QUERY SELECT * FROM {s}.departed(v_rows);
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
    RETURN QUERY SELECT * FROM {s}.departed(v_rows);
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
    RETURN QUERY SELECT * FROM {s}.departed(v_rows);
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
    RETURN QUERY SELECT * FROM {s}.departed(v_rows);
END $$;

-- Coalesced calls: many callers' joins or leaves in one statement. The
-- batch's topics are locked up front in the one order, then each request is
-- applied in turn, exactly as if made alone (the per-call functions take
-- the same locks again, which costs nothing once held).
CREATE FUNCTION {s}.join_many(
    p_topics text[], p_members text[], p_connections text[], p_metas text[],
    p_nows bigint[], p_maxes bigint[]
) RETURNS TABLE (r_i integer, r_outcome text, r_joined_at bigint, r_first boolean, r_changed boolean)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {s}.lock_topics(p_topics);
    FOR i IN 1 .. coalesce(array_length(p_topics, 1), 0) LOOP
        RETURN QUERY SELECT i, j.r_outcome, j.r_joined_at, j.r_first, j.r_changed
        FROM {s}.join(p_topics[i], p_members[i], p_connections[i], p_metas[i], p_nows[i], p_maxes[i]) AS j;
    END LOOP;
END $$;

CREATE FUNCTION {s}.leave_many(p_topics text[], p_members text[], p_connections text[])
RETURNS TABLE (
    r_i integer, topic text, member text, connection text, meta text,
    joined_at bigint, last_seen_at bigint, last_for_member boolean
)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {s}.lock_topics(p_topics);
    FOR i IN 1 .. coalesce(array_length(p_topics, 1), 0) LOOP
        RETURN QUERY SELECT i, d.* FROM {s}.leave(p_topics[i], p_members[i], p_connections[i]) AS d;
    END LOOP;
END $$;

-- The common batch in one set-based statement: joins without a member
-- limit, every key once. (Batches with limits or repeated keys go through
-- join_many, request by request.) The topics are locked first, so the state
-- read here is the state the batch applies to.
CREATE FUNCTION {s}.join_set(
    p_topics text[], p_members text[], p_connections text[], p_metas text[], p_nows bigint[]
) RETURNS TABLE (r_i integer, r_outcome text, r_joined_at bigint, r_first boolean, r_changed boolean)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {s}.lock_topics(p_topics);
    RETURN QUERY
    WITH request AS (
        SELECT r.i::integer AS i, r.t, r.m, r.c, r.meta, r.now
        FROM unnest(p_topics, p_members, p_connections, p_metas, p_nows)
            WITH ORDINALITY AS r (t, m, c, meta, now, i)
    ),
    before AS (
        -- LATERAL ... LIMIT 1 cannot be flattened into a join: one index
        -- probe per request, whatever the planner's statistics say (a plan
        -- cached while the table was new would otherwise scan all of it).
        SELECT q.*, e.meta AS old_meta, e.joined_at AS old_joined, p.present IS NOT NULL AS member_present
        FROM request q
        LEFT JOIN LATERAL (
            SELECT y.meta, y.joined_at FROM {s}.entries y
            WHERE y.topic = q.t AND y.member = q.m AND y.connection = q.c
            LIMIT 1
        ) AS e ON true
        LEFT JOIN LATERAL (
            SELECT true AS present FROM {s}.entries x
            WHERE x.topic = q.t AND x.member = q.m
            LIMIT 1
        ) AS p ON true
    ),
    classified AS (
        SELECT b.*, b.old_joined IS NOT NULL AS was_present,
            coalesce(NOT b.member_present AND b.old_joined IS NULL
                AND b.i = min(b.i) FILTER (WHERE b.old_joined IS NULL) OVER (PARTITION BY b.t, b.m), false)
                AS first
        FROM before b
    ),
    written AS (
        INSERT INTO {s}.entries AS e (topic, member, connection, meta, joined_at, last_seen_at)
        SELECT c.t, c.m, c.c, c.meta, c.now, c.now FROM classified c
        ON CONFLICT (topic, member, connection) DO UPDATE
        SET meta = excluded.meta, last_seen_at = excluded.last_seen_at
    ),
    counted AS (
        INSERT INTO {s}.topics AS t (topic, members, connections)
        SELECT c.t, count(*) FILTER (WHERE c.first), count(*) FILTER (WHERE NOT c.was_present)
        FROM classified c
        GROUP BY c.t
        HAVING count(*) FILTER (WHERE NOT c.was_present) > 0
        ON CONFLICT (topic) DO UPDATE
        SET members = t.members + excluded.members, connections = t.connections + excluded.connections
    )
    SELECT c.i,
        CASE WHEN c.was_present THEN 'rejoined' ELSE 'joined' END,
        coalesce(c.old_joined, c.now),
        c.first,
        c.was_present AND c.old_meta IS DISTINCT FROM c.meta
    FROM classified c
    ORDER BY c.i;
END $$;
