-- 0020_ui_indexes: what `conveyor ui` needs to answer every page within 300 ms with a
-- million jobs and a hundred thousand DLQ rows.
--
-- The job search pages newest first by (created_at, job_id) (keyset pagination, never
-- OFFSET), alone or under one equality filter; each index below serves one filter and
-- the order together, so a page reads only the rows it shows. Other filters narrow
-- those rows.
CREATE INDEX jobs_created_idx ON jobs (created_at, job_id);
CREATE INDEX jobs_state_created_idx ON jobs (state, created_at, job_id);
CREATE INDEX jobs_type_created_idx ON jobs (type, created_at, job_id);
CREATE INDEX jobs_key_created_idx ON jobs (key, created_at, job_id) WHERE key IS NOT NULL;
-- Replaces the plain tenant index: the same lookups, plus the search order.
DROP INDEX jobs_tenant_idx;
CREATE INDEX jobs_tenant_idx ON jobs (tenant_id, created_at, job_id);

-- The overview's waits (submit to start) of the jobs started in the last hour.
CREATE INDEX jobs_started_idx ON jobs (started_at) WHERE started_at IS NOT NULL;
-- The overview's queued and running counts per priority: few rows, whatever the history.
CREATE INDEX jobs_live_idx ON jobs (priority, state) WHERE state IN ('queued', 'processing');

-- The DLQ page pages newest first by (dlq_at, id), over every row or the pending ones,
-- under a reason or tenant filter (type is served by job_dlq_pending_type_idx).
CREATE INDEX job_dlq_at_idx ON job_dlq (dlq_at, id);
CREATE INDEX job_dlq_pending_reason_idx ON job_dlq (error_reason, dlq_at, id)
    WHERE replayed_at IS NULL;
CREATE INDEX job_dlq_pending_tenant_idx ON job_dlq (tenant_id, dlq_at, id)
    WHERE replayed_at IS NULL;
