-- 0050_ledger: where the ledger read each job, so status() can tell a queued job's place
-- in its partition (its offset minus the worker group's committed offset).
--
-- The ledger (conveyor/ledger) inserts a 'queued' row for every job message it reads;
-- these columns say which message that was. Workers that insert a row first leave them
-- null, and nothing else reads them, so they need no index: status() reads them by
-- job_id. Nullable columns without a default are added without rewriting the table.
ALTER TABLE jobs
    ADD COLUMN source_topic     text,
    ADD COLUMN source_partition integer,
    ADD COLUMN source_offset    bigint;
