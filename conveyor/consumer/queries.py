"""The named SQL queries ``StatusStore`` (``conveyor.consumer.status``) runs.

Kept together so the whole lifecycle a worker writes to the ``jobs`` and
``job_transitions`` tables reads in one place. Every fenced statement takes ``$1``
job_id, ``$2`` lease owner and ``$3`` lease epoch, and has ``state = 'processing'`` in
its condition, so it matches nothing once the job moved on; it returns ``job_id`` when it
wrote (no row when the lease was lost).
"""

from __future__ import annotations

CLAIM_MANY = """
WITH input AS (
    SELECT *
    FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::text[],
        $8::int[], $9::timestamptz[], $10::int[]
    ) AS t (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, attempt
    )
), claimed AS (
    INSERT INTO jobs AS j (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, state, attempts, started_at, lease_owner, lease_epoch,
        lease_expires_at, updated_at
    )
    SELECT
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, 'processing', attempt, now(), $11, 1,
        now() + make_interval(secs => $12), now()
    FROM input
    -- One lock order for every batch, so two workers' batches never deadlock.
    ORDER BY job_id
    ON CONFLICT (job_id) DO UPDATE SET
        type = EXCLUDED.type,
        key = EXCLUDED.key,
        tenant_id = EXCLUDED.tenant_id,
        priority = EXCLUDED.priority,
        batch_id = EXCLUDED.batch_id,
        dedupe_key = EXCLUDED.dedupe_key,
        max_attempts = EXCLUDED.max_attempts,
        submitted_at = EXCLUDED.submitted_at,
        state = 'processing',
        -- An in-place retry's chain lives in the worker, not in a message: a redelivery
        -- of its first message resumes after the attempts the row already counts.
        attempts = CASE WHEN EXCLUDED.job_id = ANY($13::uuid[]) THEN greatest(
            EXCLUDED.attempts,
            j.attempts + (j.state = 'queued' AND j.last_error IS NOT NULL)::int
        ) ELSE EXCLUDED.attempts END,
        started_at = now(),
        lease_owner = EXCLUDED.lease_owner,
        lease_epoch = j.lease_epoch + 1,
        lease_expires_at = EXCLUDED.lease_expires_at,
        progress_pct = NULL,
        progress_message = NULL,
        progress_at = NULL,
        updated_at = now()
    WHERE j.state NOT IN ('complete', 'failed', 'cancelled')
        -- An older attempt read again (a later one is queued in a retry topic, or runs)
        -- is a duplicate: attempts never go backwards.
        AND (EXCLUDED.attempts >= j.attempts OR EXCLUDED.job_id = ANY($13::uuid[]))
        -- A long job ($14) another worker runs under a live lease (it heartbeats) is left
        -- to it: the partition moved in a rebalance, not the job. Taking it over would
        -- restart it from the beginning on every rebalance.
        AND NOT (
            EXCLUDED.job_id = ANY($14::uuid[]) AND j.state = 'processing'
            AND j.lease_owner IS DISTINCT FROM EXCLUDED.lease_owner
            AND j.lease_expires_at > now()
        )
    RETURNING j.job_id, j.lease_epoch, j.attempts, (j.xmax = 0) AS inserted,
        (j.cancel_requested_at IS NOT NULL) AS cancel_requested
), history AS (
    INSERT INTO job_transitions (job_id, state, at, attempt)
    SELECT c.job_id, t.state, t.at, c.attempts
    FROM claimed AS c
    JOIN input AS i USING (job_id)
    CROSS JOIN LATERAL (VALUES (1, 'queued', i.submitted_at), (2, 'processing', now()))
        AS t (ord, state, at)
    WHERE c.inserted OR t.state = 'processing'
    ORDER BY c.job_id, t.ord
)
SELECT c.job_id, c.lease_epoch, c.attempts, c.cancel_requested FROM claimed AS c
"""
"""Claims jobs under new leases unless they already ended, in one statement (group
commit); distinct job ids only. A job another worker holds is taken over with the next
epoch; the cancel flag is read in the same statement, so no race. A delivery of an
attempt older than the row's (``attempts``) is not claimed: a later attempt is queued or
running, so this one is a duplicate.

$1..$10 are arrays, one element per job: job_id (uuid), type, key, tenant_id, priority,
batch_id (uuid), dedupe_key, max_attempts (int), submitted_at (timestamptz), attempt
(int); $11 lease owner, $12 lease seconds (float), $13 the ids of jobs that retry in
place (``ordering="key"``), whose attempt is the row's next one rather than the
message's. One row per job claimed: its new ``lease_epoch``, ``attempts`` and
``cancel_requested``; a job missing from them was not claimed (read its state with
``STATES``).
"""

STATES = """
SELECT job_id, state,
    (state = 'processing' AND lease_owner IS DISTINCT FROM $2 AND lease_expires_at > now())
        AS held
FROM jobs WHERE job_id = ANY($1::uuid[])
"""
"""The state of each job of $1 (uuid[]) that has a row, and whether a worker other than
$2 (text) holds it under a live lease.

Run after ``CLAIM_MANY`` as a statement of its own: a cancel that committed while the
claim waited for its row lock is newer than the claim's snapshot, and only a new
snapshot reports it as it is.
"""

# clock_timestamp(), not now(): this runs at the end of the handler's transaction, and
# now() would say when that transaction began.
COMPLETE = """
WITH done AS (
    UPDATE jobs
    SET state = 'complete', result = $4::text::jsonb, finished_at = clock_timestamp(),
        lease_owner = NULL, lease_expires_at = NULL, updated_at = clock_timestamp()
    WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
    RETURNING job_id, attempts, finished_at
)
INSERT INTO job_transitions (job_id, state, at, attempt)
SELECT job_id, 'complete', finished_at, attempts FROM done
RETURNING job_id
"""
"""Fenced: records the job complete. $4 result (JSON text)."""

COMPLETE_MANY = """
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[])
        AS t (job_id, owner, epoch, result)
), locked AS (
    -- Rows are locked in one order for every batch, so batches never deadlock.
    SELECT j.job_id FROM jobs AS j JOIN input AS i USING (job_id)
    ORDER BY j.job_id
    FOR UPDATE OF j
), done AS (
    UPDATE jobs AS j
    SET state = 'complete', result = i.result::jsonb, finished_at = clock_timestamp(),
        lease_owner = NULL, lease_expires_at = NULL, updated_at = clock_timestamp()
    FROM input AS i JOIN locked AS l USING (job_id)
    WHERE j.job_id = i.job_id AND j.lease_owner = i.owner AND j.lease_epoch = i.epoch
        AND j.state = 'processing'
    RETURNING j.job_id, j.attempts, j.finished_at
)
INSERT INTO job_transitions (job_id, state, at, attempt)
SELECT job_id, 'complete', finished_at, attempts FROM done ORDER BY job_id
RETURNING job_id
"""
"""``COMPLETE`` for many jobs whose handlers wrote nothing through ``ctx.db``.

$1 job ids, $2 lease owners, $3 lease epochs, $4 results (JSON text): arrays, one element
per job. Returns the job ids it completed; a job missing from them lost its lease.
"""

FAIL = """
WITH done AS (
    UPDATE jobs
    SET state = 'failed', last_error = $4::text::jsonb, finished_at = now(),
        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
    RETURNING job_id, attempts, finished_at
)
INSERT INTO job_transitions (job_id, state, at, attempt, error)
SELECT job_id, 'failed', finished_at, attempts, $4::text::jsonb FROM done
RETURNING job_id
"""
"""Fenced: records the job failed for good. $4 last error (JSON text)."""

RETRY = """
WITH requeued AS (
    UPDATE jobs
    SET state = 'queued', last_error = $4::text::jsonb,
        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
    RETURNING job_id, attempts, updated_at
)
INSERT INTO job_transitions (job_id, state, at, attempt, error)
SELECT job_id, 'queued', updated_at, attempts, $4::text::jsonb FROM requeued
RETURNING job_id
"""
"""Fenced: returns the job to queued after a failed attempt. $4 error (JSON text)."""

CANCELLED = """
WITH done AS (
    UPDATE jobs
    SET state = 'cancelled', finished_at = now(),
        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
    RETURNING job_id, attempts, finished_at
)
INSERT INTO job_transitions (job_id, state, at, attempt, error)
SELECT job_id, 'cancelled', finished_at, attempts, $4::text::jsonb FROM done
RETURNING job_id
"""
"""Fenced: records the job cancelled. $4 reason as an error (JSON text, or NULL)."""

HEARTBEAT = """
UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $4)
WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
RETURNING job_id
"""
"""Fenced: extends the lease. $4 lease seconds (float)."""

PROGRESS = """
UPDATE jobs
SET progress_pct = $4, progress_message = $5, progress_at = now(), updated_at = now()
WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
RETURNING job_id
"""
"""Fenced: records progress. $4 percent (float), $5 message (text or NULL)."""

CANCEL_REQUESTED = "SELECT cancel_requested_at IS NOT NULL FROM jobs WHERE job_id = $1"
"""Whether a cancel was requested for the job. $1 job_id."""


KNOWN_MANY = """
SELECT job_id::text, state, attempts, lease_owner IS NOT NULL AS leased,
    cancel_requested_at IS NOT NULL AS cancel_requested
FROM jobs WHERE job_id = ANY($1::uuid[])
"""
"""What the rows of jobs about to run say, read before running them unclaimed.
$1 job ids (uuid[]); one row per job that has one, its id as text (the worker's form:
no ``uuid.UUID`` to make and print per row)."""

COMPLETE_UNCLAIMED_MANY = """
WITH input AS (
    SELECT *
    FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::text[],
        $8::int[], $9::timestamptz[], $10::int[], $11::timestamptz[], $12::text[]
    ) AS t (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, attempt, started_at, result
    )
), done AS (
    INSERT INTO jobs AS j (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, state, attempts, started_at, finished_at, result, updated_at
    )
    SELECT
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, 'complete', attempt,
        started_at, greatest(clock_timestamp(), started_at),
        result::jsonb, clock_timestamp()
    FROM input
    -- One lock order for every batch, so two workers' batches never deadlock.
    ORDER BY job_id
    ON CONFLICT (job_id) DO UPDATE SET
        type = EXCLUDED.type,
        key = EXCLUDED.key,
        tenant_id = EXCLUDED.tenant_id,
        priority = EXCLUDED.priority,
        batch_id = EXCLUDED.batch_id,
        dedupe_key = EXCLUDED.dedupe_key,
        max_attempts = EXCLUDED.max_attempts,
        submitted_at = EXCLUDED.submitted_at,
        state = 'complete',
        attempts = EXCLUDED.attempts,
        started_at = EXCLUDED.started_at,
        finished_at = EXCLUDED.finished_at,
        result = EXCLUDED.result,
        progress_pct = NULL,
        progress_message = NULL,
        progress_at = NULL,
        updated_at = EXCLUDED.updated_at
    -- Fenced without a lease: nobody ended the job, nobody holds it, and no later
    -- attempt was counted.
    WHERE j.state NOT IN ('complete', 'failed', 'cancelled') AND j.lease_owner IS NULL
        AND EXCLUDED.attempts >= j.attempts
    RETURNING j.job_id, j.attempts, j.started_at, j.finished_at, (j.xmax = 0) AS inserted
), history AS (
    INSERT INTO job_transitions (job_id, state, at, attempt)
    SELECT d.job_id, t.state, t.at, d.attempts
    FROM done AS d
    JOIN input AS i USING (job_id)
    CROSS JOIN LATERAL (
        VALUES (1, 'queued', i.submitted_at), (2, 'processing', d.started_at),
            (3, 'complete', d.finished_at)
    ) AS t (ord, state, at)
    WHERE d.inserted OR t.ord > 1
    ORDER BY d.job_id, t.ord
)
SELECT job_id::text FROM done
"""
"""Records jobs that ran unclaimed complete, with their queued (when the row is new),
processing and complete transitions, in one statement; distinct job ids only.

Written only where no worker ended the job or holds its lease, and no later attempt
was counted. $1..$10 as ``CLAIM_MANY``'s; $11 when each handler started (the worker's
clock: the write may wait for its batch, so Postgres' clock would tell when the job was
recorded, not when it started), $12 the results (JSON text). Returns the
job ids it completed, as text; read the others' states with ``STATES``.
"""

__all__ = [
    "CANCELLED",
    "CANCEL_REQUESTED",
    "CLAIM_MANY",
    "COMPLETE",
    "COMPLETE_MANY",
    "COMPLETE_UNCLAIMED_MANY",
    "FAIL",
    "HEARTBEAT",
    "KNOWN_MANY",
    "PROGRESS",
    "RETRY",
    "STATES",
]
