-- 0040_notify_per_statement: the job-change notifications of 0003 once per statement,
-- not once per row.
--
-- 0003's row triggers ran a PL/pgSQL function and queued one notification for every row
-- a statement touched: a worker's batched claim or completion of 500 jobs queued 500,
-- which more than doubled the statement's cost (51.8 ms against 22.3 ms), and the
-- commit copies every queued notification into the shared queue while it holds the
-- lock that orders all notifying commits. These statement triggers read the changed
-- rows from transition tables and send one notification per 200 of them, the payload
-- being their job ids joined by commas (7,400 bytes, under the 8,000-byte limit), so
-- a batch costs a few notifications. Listeners (JobStore.progress) look for their job
-- id among the payload's. The channel is unchanged: named after the schema, hashed when
-- longer than 63 bytes, as conveyor.consumer.status.progress_channel() computes it.
-- Lease renewals (heartbeats) change none of the watched columns, so they wake nobody.

DROP TRIGGER jobs_notify_insert ON jobs;
DROP TRIGGER jobs_notify_update ON jobs;
DROP FUNCTION notify_job_change();

CREATE FUNCTION notify_job_changes() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    channel text := 'conveyor_progress_' || TG_TABLE_SCHEMA;
    ids text;
BEGIN
    IF octet_length(channel) > 63 THEN
        channel := 'conveyor_progress_' || md5(TG_TABLE_SCHEMA);
    END IF;
    IF TG_OP = 'INSERT' THEN
        FOR ids IN
            SELECT string_agg(c.job_id::text, ',')
            FROM (SELECT job_id, (row_number() OVER () - 1) / 200 AS chunk FROM new_rows) AS c
            GROUP BY c.chunk
        LOOP
            PERFORM pg_notify(channel, ids);
        END LOOP;
    ELSE
        FOR ids IN
            SELECT string_agg(c.job_id::text, ',')
            FROM (
                SELECT n.job_id, (row_number() OVER () - 1) / 200 AS chunk
                FROM new_rows AS n
                JOIN old_rows AS o USING (job_id)
                WHERE o.state IS DISTINCT FROM n.state
                    OR o.attempts IS DISTINCT FROM n.attempts
                    OR o.lease_epoch IS DISTINCT FROM n.lease_epoch
                    OR o.progress_pct IS DISTINCT FROM n.progress_pct
                    OR o.progress_message IS DISTINCT FROM n.progress_message
            ) AS c
            GROUP BY c.chunk
        LOOP
            PERFORM pg_notify(channel, ids);
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_insert
    AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_job_changes();

CREATE TRIGGER jobs_notify_update
    AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_job_changes();
