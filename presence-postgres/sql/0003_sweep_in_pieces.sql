-- sweep_all in bounded pieces (see BENCHMARKS.md): the store finds the
-- topics with expired entries in one scan, cuts them into pieces of a few
-- whole topics, and sweeps each piece in a transaction of its own, so other writes interleave
-- with a mass expiry instead of waiting for one transaction over the whole
-- table. Each piece is atomic for its topics, as `sweep` is for one.
CREATE FUNCTION {s}.sweep_topics(p_topics text[], p_older_than bigint)
RETURNS SETOF {s}.departure LANGUAGE plpgsql AS $$
DECLARE
    v_rows {s}.entries[];
BEGIN
    PERFORM {s}.lock_topics(p_topics);
    -- A statement of its own, begun after the locks: it sees every removal
    -- committed by a concurrent sweeper, so no entry is reported twice.
    WITH d AS (
        DELETE FROM {s}.entries e
        WHERE e.topic = ANY (p_topics) AND e.last_seen_at < p_older_than
        RETURNING e
    ) SELECT array_agg(d.e) INTO v_rows FROM d;
    RETURN QUERY SELECT * FROM {s}.departed(v_rows);
END $$;
