-- error_reason is an open set in the DlqRecord contract: a newer worker may dead-letter a
-- job for a reason this schema has never heard of, and the sink must still store it (the
-- closed list made Postgres refuse the row, and the job vanished from the DLQ). Any
-- identifier-like name is accepted instead.
ALTER TABLE job_dlq DROP CONSTRAINT job_dlq_error_reason_check;
ALTER TABLE job_dlq ADD CONSTRAINT job_dlq_error_reason_check
    CHECK (error_reason ~ '^[A-Za-z][A-Za-z0-9_.-]{0,63}$');
