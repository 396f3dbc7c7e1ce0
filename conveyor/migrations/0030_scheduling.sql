-- 0030_scheduling: delayed and run_at jobs held until due, the `scheduled` state, and
-- recurring (cron) schedules. See conveyor.scheduling and ARCHITECTURE.md, "Scheduling".

-- A job submitted with a delay or run_at is `scheduled` until the dispatcher releases it
-- to its priority topic; its row says when it is due.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('scheduled', 'queued', 'processing', 'complete', 'failed', 'cancelled'));
ALTER TABLE job_transitions DROP CONSTRAINT job_transitions_state_check;
ALTER TABLE job_transitions ADD CONSTRAINT job_transitions_state_check
    CHECK (state IN ('scheduled', 'queued', 'processing', 'complete', 'failed', 'cancelled'));
ALTER TABLE jobs ADD COLUMN scheduled_for timestamptz;

-- One row per delayed job, written by the scheduler from <prefix>.jobs.scheduled (keyed by
-- job id, so a redelivered message adds nothing) and released once by a dispatcher: it
-- locks due rows FOR UPDATE SKIP LOCKED, publishes the message as it was submitted to
-- `topic`, waits for the broker's ack and sets released_at in the same transaction.
CREATE TABLE scheduled_jobs (
    job_id        uuid PRIMARY KEY,
    due_at        timestamptz NOT NULL,
    topic         text NOT NULL,
    type          text NOT NULL,
    priority      text NOT NULL CONSTRAINT scheduled_jobs_priority_check
                      CHECK (priority IN ('critical', 'high', 'normal', 'low')),
    tenant_id     text,
    -- The Kafka record as the producer built it: key, value (the envelope in Confluent
    -- wire format) and headers (trace context included).
    message_key   bytea NOT NULL,
    message_value bytea NOT NULL,
    -- [[name, base64 value or null], ...] in order.
    headers       jsonb NOT NULL DEFAULT '[]' CONSTRAINT scheduled_jobs_headers_is_array
                      CHECK (jsonb_typeof(headers) = 'array'),
    -- The recurring schedule whose tick this is, if any.
    schedule_name text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Set when the dispatcher released it, or when it was cancelled (skipped = true).
    released_at   timestamptz,
    skipped       boolean NOT NULL DEFAULT false
);

-- The dispatcher's only scan: the earliest pending rows.
CREATE INDEX scheduled_jobs_due_idx ON scheduled_jobs (due_at) WHERE released_at IS NULL;
CREATE INDEX scheduled_jobs_released_idx ON scheduled_jobs (released_at)
    WHERE released_at IS NOT NULL;

-- Wakes sleeping dispatchers when new rows arrive (one notification per statement, so a
-- bulk insert costs one); they re-read the earliest due time. Channel named after the
-- schema, md5 when too long, as conveyor.scheduling.store.wake_channel() does.
CREATE FUNCTION notify_scheduled_jobs() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    channel text := 'conveyor_scheduled_' || TG_TABLE_SCHEMA;
BEGIN
    IF octet_length(channel) > 63 THEN
        channel := 'conveyor_scheduled_' || md5(TG_TABLE_SCHEMA);
    END IF;
    PERFORM pg_notify(channel, '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER scheduled_jobs_notify
    AFTER INSERT ON scheduled_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION notify_scheduled_jobs();

-- Released rows are kept a while (a redelivered scheduled-topic message must still find
-- its row, or the job would be scheduled twice), then purged with finished jobs.
CREATE FUNCTION purge_released_scheduled_jobs(older_than interval DEFAULT interval '7 days')
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    deleted bigint;
BEGIN
    DELETE FROM scheduled_jobs WHERE released_at < now() - older_than;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
$$;

-- Recurring schedules: declared in code (Worker.schedule, upserted at start) or by
-- `conveyor schedule add`. next_fire_at advances under a row lock (SKIP LOCKED), and each
-- tick's job id is derived from (name, tick time), so a tick is submitted once however
-- many workers run.
CREATE TABLE schedules (
    name          text PRIMARY KEY,
    cron          text NOT NULL,
    timezone      text NOT NULL,
    type          text NOT NULL,
    payload       jsonb NOT NULL DEFAULT 'null',
    priority      text NOT NULL DEFAULT 'normal' CONSTRAINT schedules_priority_check
                      CHECK (priority IN ('critical', 'high', 'normal', 'low')),
    key           text,
    tenant_id     text,
    catch_up      text NOT NULL DEFAULT 'last' CONSTRAINT schedules_catch_up_check
                      CHECK (catch_up IN ('none', 'last', 'all')),
    paused        boolean NOT NULL DEFAULT false,
    next_fire_at  timestamptz NOT NULL,
    last_fire_at  timestamptz,
    source        text NOT NULL DEFAULT 'cli' CONSTRAINT schedules_source_check
                      CHECK (source IN ('code', 'cli')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX schedules_next_fire_idx ON schedules (next_fire_at) WHERE NOT paused;
