-- 0001_jobs: job status, transition history, the dead-letter table, purge functions and
-- row-level security by tenant.
--
-- The runner executes this file in one transaction with
-- `SET LOCAL search_path TO <schema>, public`, so names stay unqualified here and the
-- schema is whatever CONVEYOR_DATABASE_SCHEMA says. Never hard-code a schema name.

-- Current state of every job, keyed by the id the producer chose (a UUIDv5 when the job
-- has a dedupe key, which is how a duplicate submit lands on the existing row).
CREATE TABLE jobs (
    job_id              uuid PRIMARY KEY,
    type                text NOT NULL,
    key                 text,
    tenant_id           text,
    priority            text CONSTRAINT jobs_priority_check
                            CHECK (priority IN ('critical', 'high', 'normal', 'low')),
    batch_id            uuid,
    dedupe_key          text,
    state               text NOT NULL CONSTRAINT jobs_state_check
                            CHECK (state IN ('queued', 'processing', 'complete', 'failed',
                                             'cancelled')),
    attempts            integer NOT NULL DEFAULT 0 CONSTRAINT jobs_attempts_check
                            CHECK (attempts >= 0),
    max_attempts        integer CONSTRAINT jobs_max_attempts_check CHECK (max_attempts >= 1),
    result              jsonb,
    last_error          jsonb,
    progress_pct        real CONSTRAINT jobs_progress_pct_check
                            CHECK (progress_pct >= 0 AND progress_pct <= 100),
    progress_message    text,
    -- The lease fences a worker that lost its partition: a completion must present the
    -- epoch it was granted, and every new grant increments it.
    lease_owner         text,
    lease_epoch         bigint NOT NULL DEFAULT 0,
    lease_expires_at    timestamptz,
    cancel_requested_at timestamptz,
    submitted_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz
);

-- Matches the predicate of purge_finished_jobs, so the purge never scans live jobs.
CREATE INDEX jobs_finished_idx ON jobs (finished_at)
    WHERE state IN ('complete', 'failed', 'cancelled');
CREATE INDEX jobs_tenant_idx ON jobs (tenant_id);
-- Most jobs are not part of a batch; a lookup by batch id implies it is not null.
CREATE INDEX jobs_batch_idx ON jobs (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX jobs_type_state_idx ON jobs (type, state);

-- Every state change of a job; goes away with its job (7 days after it ended).
CREATE TABLE job_transitions (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   uuid NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    state    text NOT NULL CONSTRAINT job_transitions_state_check
                 CHECK (state IN ('queued', 'processing', 'complete', 'failed', 'cancelled')),
    at       timestamptz NOT NULL DEFAULT now(),
    attempt  integer NOT NULL,
    error    jsonb
);

-- History in insertion order, and the index the foreign key's cascade needs.
CREATE INDEX job_transitions_job_idx ON job_transitions (job_id, id);

-- One row per dead job, written by the DLQ sink from the <prefix>.jobs.dlq topic.
CREATE TABLE job_dlq (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Null when the message could not be decoded at all: it has no job id.
    original_job_id  uuid,
    tenant_id        text,
    type             text,
    -- The job payload, or the raw message bytes when the message was undecodable.
    payload          bytea NOT NULL,
    content_type     text,
    error_reason     text NOT NULL CONSTRAINT job_dlq_error_reason_check
                         CHECK (error_reason IN ('MaxRetries', 'Validation', 'HandlerMissing',
                                                 'Deserialization', 'Permanent', 'Timeout')),
    attempts         integer NOT NULL CONSTRAINT job_dlq_attempts_check CHECK (attempts >= 0),
    -- One entry per failed attempt; replay and `conveyor dlq show` rely on it being a list.
    error_history    jsonb NOT NULL CONSTRAINT job_dlq_error_history_is_array
                         CHECK (jsonb_typeof(error_history) = 'array'),
    dlq_at           timestamptz NOT NULL DEFAULT now(),
    replayed_at      timestamptz,
    trace_id         text,
    source_topic     text,
    source_partition integer,
    source_offset    bigint,
    -- Kept so a replay can resubmit the job with its ordering key and priority even after
    -- the jobs row has been purged (DLQ rows outlive job history).
    key              text,
    priority         text CONSTRAINT job_dlq_priority_check
                         CHECK (priority IN ('critical', 'high', 'normal', 'low')),
    -- A DLQ message redelivered after a crash must not add a second row: the sink inserts
    -- with ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING.
    CONSTRAINT job_dlq_source_unique UNIQUE (source_topic, source_partition, source_offset)
);

-- Pending (not yet replayed) rows are what operators list, oldest first, often by type.
CREATE INDEX job_dlq_pending_idx ON job_dlq (dlq_at) WHERE replayed_at IS NULL;
CREATE INDEX job_dlq_pending_type_idx ON job_dlq (type, dlq_at) WHERE replayed_at IS NULL;
CREATE INDEX job_dlq_tenant_idx ON job_dlq (tenant_id);
CREATE INDEX job_dlq_original_job_idx ON job_dlq (original_job_id);
-- Matches the predicate of purge_replayed_dlq.
CREATE INDEX job_dlq_replayed_idx ON job_dlq (replayed_at) WHERE replayed_at IS NOT NULL;

-- Purge functions. SET search_path FROM CURRENT pins the schema this migration ran in,
-- so a caller (cron, pg_cron, an operator's psql) need not set its own search_path.
-- They run as the caller (SECURITY INVOKER): a tenant role purges only its own rows.

-- Deletes jobs that ended (complete, failed, cancelled) more than `older_than` ago; their
-- transitions go with them by cascade. Returns the number of jobs deleted.
CREATE FUNCTION purge_finished_jobs(older_than interval DEFAULT interval '7 days')
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    deleted bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'purge_finished_jobs: older_than must be a non-negative interval, got %',
            older_than;
    END IF;
    DELETE FROM jobs
    WHERE state IN ('complete', 'failed', 'cancelled')
      AND finished_at < now() - older_than;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
$$;

-- Deletes DLQ rows replayed more than `older_than` ago; pending rows are never purged.
-- Returns the number of rows deleted.
CREATE FUNCTION purge_replayed_dlq(older_than interval DEFAULT interval '30 days')
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    deleted bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'purge_replayed_dlq: older_than must be a non-negative interval, got %',
            older_than;
    END IF;
    DELETE FROM job_dlq
    WHERE replayed_at < now() - older_than;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
$$;

-- Row-level security by tenant, keyed by the session setting `conveyor.tenant_id`
-- (SET conveyor.tenant_id = 'acme', or set_config('conveyor.tenant_id', 'acme', true) per
-- transaction).
--
-- RLS is ENABLED, not FORCED: the table owner, that is the role that runs
-- `conveyor migrate` and the workers, bypasses the policies and sees every tenant, as the
-- worker, the DLQ sink and the purge jobs must. Superusers and BYPASSRLS roles bypass too.
-- Tenant-facing application roles are separate, non-owner roles that the deployer grants
-- USAGE on this schema and SELECT (and whatever else they need) on these tables: they see
-- and write only rows whose tenant_id equals their conveyor.tenant_id, and nothing when it
-- is unset (current_setting(..., true) is then null or empty). Rows without a tenant_id are
-- visible to the owner only. job_transitions has no tenant column; its policy follows the
-- job, so such a role also needs SELECT on jobs.
ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE job_dlq ENABLE ROW LEVEL SECURITY;
ALTER TABLE job_transitions ENABLE ROW LEVEL SECURITY;

CREATE POLICY jobs_tenant_isolation ON jobs
    FOR ALL
    USING (tenant_id = current_setting('conveyor.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('conveyor.tenant_id', true));

CREATE POLICY job_dlq_tenant_isolation ON job_dlq
    FOR ALL
    USING (tenant_id = current_setting('conveyor.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('conveyor.tenant_id', true));

-- The subquery on jobs is itself filtered by the jobs policy for the same role.
CREATE POLICY job_transitions_tenant_isolation ON job_transitions
    FOR ALL
    USING (EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = job_transitions.job_id))
    WITH CHECK (EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = job_transitions.job_id));
