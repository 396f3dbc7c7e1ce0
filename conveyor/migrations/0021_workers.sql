-- 0021_workers: one row per running worker process, written by its heartbeat
-- (conveyor.consumer.heartbeat) and read by the Workers page of `conveyor ui`.
--
-- A worker upserts its row every few seconds while it runs and stamps stopped_at when it
-- leaves cleanly. A row whose heartbeat_at is older than a few intervals belongs to a
-- worker that died (kill -9, lost host): the UI flags it as stale. Rows of workers gone
-- for a day are deleted by the next heartbeat of any worker.
CREATE TABLE workers (
    worker_id       text PRIMARY KEY,
    host            text NOT NULL,
    pid             integer NOT NULL,
    version         text NOT NULL,
    priorities      text[] NOT NULL,
    concurrency     integer NOT NULL CONSTRAINT workers_concurrency_check
                        CHECK (concurrency >= 1),
    in_flight       integer NOT NULL DEFAULT 0,
    -- "topic:partition" of every partition the worker owns at the last heartbeat.
    partitions      text[] NOT NULL DEFAULT '{}',
    interval_s      real NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    stopped_at      timestamptz
);

CREATE INDEX workers_heartbeat_idx ON workers (heartbeat_at);
