-- 0004_dlq_events: what the DLQ sink and replay need on top of 0001_jobs: a marker that
-- the row's JobFailed event was published, and the rest of the dead job's envelope, so a
-- replay resubmits it as it was even after its jobs row was purged.

-- Set once the JobFailed event of this row was acknowledged by the broker. The sink
-- publishes only while it is null, so a redelivered DLQ message (its row already there)
-- emits no second event, and a sink that crashed between the insert and the publish
-- emits the event when the message comes back. Stays null for rows without a job id
-- (undecodable messages), which get no event.
ALTER TABLE job_dlq ADD COLUMN event_published_at timestamptz;

-- Copied from the DLQ record; a replay puts them back in the envelope it publishes.
ALTER TABLE job_dlq ADD COLUMN batch_id text;
ALTER TABLE job_dlq ADD COLUMN dedupe_key text;
ALTER TABLE job_dlq ADD COLUMN max_attempts integer
    CONSTRAINT job_dlq_max_attempts_check CHECK (max_attempts >= 1);
ALTER TABLE job_dlq ADD COLUMN duration text
    CONSTRAINT job_dlq_duration_check CHECK (duration IN ('short', 'long'));
ALTER TABLE job_dlq ADD COLUMN submitted_at timestamptz;
