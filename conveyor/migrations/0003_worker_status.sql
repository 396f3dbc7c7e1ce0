-- 0003_worker_status: what the worker's status store and the job store need on top of
-- 0001_jobs: cancel before a worker has seen the job, a progress timestamp, and
-- notifications that let clients follow a job without polling.

-- `conveyor cancel` may name a job no worker has consumed yet. Its row is then written
-- with state 'cancelled' before the type is known, and the worker skips the job when it
-- arrives; so type (like the other columns copied from the message) may be null.
ALTER TABLE jobs ALTER COLUMN type DROP NOT NULL;

-- updated_at moves with every lease change; watchers want when the progress moved.
ALTER TABLE jobs ADD COLUMN progress_at timestamptz;

-- Tells listeners that a job's state or progress changed. The channel is named after the
-- schema so deployments sharing a database do not wake each other's watchers; a schema
-- name too long for a 63-byte channel name is replaced by its md5, the same rule as
-- conveyor.consumer.status.progress_channel(). The payload is the job id.
-- NOTIFY is transactional: a completion inside a handler's transaction is announced
-- only if that transaction commits.
CREATE FUNCTION notify_job_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    channel text := 'conveyor_progress_' || TG_TABLE_SCHEMA;
BEGIN
    IF octet_length(channel) > 63 THEN
        channel := 'conveyor_progress_' || md5(TG_TABLE_SCHEMA);
    END IF;
    PERFORM pg_notify(channel, NEW.job_id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_insert
    AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION notify_job_change();

-- Lease renewals (heartbeats) change neither, so they wake nobody.
CREATE TRIGGER jobs_notify_update
    AFTER UPDATE ON jobs
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.attempts IS DISTINCT FROM NEW.attempts
          OR OLD.lease_epoch IS DISTINCT FROM NEW.lease_epoch
          OR OLD.progress_pct IS DISTINCT FROM NEW.progress_pct
          OR OLD.progress_message IS DISTINCT FROM NEW.progress_message)
    EXECUTE FUNCTION notify_job_change();
