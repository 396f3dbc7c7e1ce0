"""The durable ceiling: consume, decode, write every job's status rows, commit; per fetch.

Run as ``python -m bench.rawdurable --topic T --group G --count N``, with the broker,
registry and Postgres (``CONVEYOR_DATABASE_SCHEMA`` naming a migrated schema) from
``CONVEYOR_*`` variables. Each fetch of up to ``BATCH`` records is decoded with fastavro
straight after the 5-byte Confluent header (the writer schema is read from the registry
once per schema id), written to Postgres in ONE statement, and then committed to Kafka
synchronously, so, like conveyor, it commits only what is recorded.

That statement writes the rows conveyor's worker writes for a no-op job that completes
(``conveyor.consumer.queries``): the ``jobs`` row, already ``complete`` with its result
``null``, started and finished times and its attempt, plus its ``queued``, ``processing``
and ``complete`` transitions. A job id already in ``jobs`` is left alone (dedupe on
consume). It runs no handler, takes no lease and keeps no per-key order: it is what one
Python process, this broker and this Postgres reach when the per-job work is only the
status rows. Progress is read from the ``jobs`` table, as conveyor's is. After ``N``
records it idles until SIGTERM (so its memory can still be read).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import struct
from collections.abc import Sequence
from typing import Any

import asyncpg
import fastavro
from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient

from conveyor.db import quote_ident
from conveyor.settings import Settings

BATCH = 500
"""Records per fetch, and so rows per statement (conveyor's worker fetches 500 too)."""

RECORD_FETCH = """
WITH input AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::text[],
        $8::int[], $9::timestamptz[], $10::int[]
    ) AS t (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, attempt
    )
), done AS (
    INSERT INTO jobs (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, state, attempts, result, lease_epoch, started_at, finished_at, updated_at
    )
    SELECT
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, 'complete', attempt, 'null'::jsonb, 1, now(), clock_timestamp(),
        clock_timestamp()
    FROM input
    ORDER BY job_id
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id, attempts, submitted_at, started_at, finished_at
)
INSERT INTO job_transitions (job_id, state, at, attempt)
SELECT d.job_id, t.state, t.at, d.attempts
FROM done AS d
CROSS JOIN LATERAL (
    VALUES (1, 'queued', d.submitted_at), (2, 'processing', d.started_at),
        (3, 'complete', d.finished_at)
) AS t (ord, state, at)
ORDER BY d.job_id, t.ord
"""
"""One fetch's jobs recorded complete with their three transitions, in one statement."""

_COLUMNS = (
    "job_id",
    "type",
    "key",
    "tenant_id",
    "priority",
    "batch_id",
    "dedupe_key",
    "max_attempts",
    "submitted_at",
    "attempt",
)


class EnvelopeReader:
    """Decodes Confluent wire-format job envelopes with fastavro and the writer's schema."""

    def __init__(self, settings: Settings) -> None:
        self._registry = SchemaRegistryClient(settings.registry_config())
        self._schemas: dict[int, Any] = {}

    def read(self, value: bytes) -> dict[str, Any]:
        """The envelope as a dict (``job_id`` a UUID, ``submitted_at`` an aware datetime)."""
        (schema_id,) = struct.unpack_from(">I", value, 1)
        schema = self._schemas.get(schema_id)
        if schema is None:
            text = self._registry.get_schema(schema_id).schema_str or ""
            schema = self._schemas[schema_id] = fastavro.parse_schema(json.loads(text))
        record = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None)
        assert isinstance(record, dict)
        return record


def columns(envelopes: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """The statement's ten arrays, one element per job, in ``_COLUMNS`` order."""
    out: list[list[Any]] = [[] for _ in _COLUMNS]
    for e in envelopes:
        job_id = str(e["job_id"])
        row = (
            job_id,
            e["type"],
            e.get("key") or job_id,
            e.get("tenant_id"),
            e["priority"],
            e.get("batch_id"),
            e.get("dedupe_key"),
            e.get("max_attempts"),
            e["submitted_at"],
            e.get("attempt", 1),
        )
        for column, value in zip(out, row, strict=True):
            column.append(value)
    return out


async def run(settings: Settings, topic: str, group: str, count: int) -> None:
    """Records ``count`` jobs from ``topic`` (group ``group``), one statement per fetch."""
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "log_level": 0,
        }
    )
    conn = await asyncpg.connect(
        settings.database_url,
        server_settings={"search_path": f"{quote_ident(settings.database_schema)}, public"},
    )
    reader = EnvelopeReader(settings)
    consumer.subscribe([topic])
    seen = 0
    try:
        while seen < count:
            # Blocking is fine: nothing else runs on this loop, and librdkafka heartbeats
            # from its own threads.
            records = [r for r in consumer.consume(BATCH, timeout=0.5) if r.error() is None]
            if not records:
                continue
            envelopes = [reader.read(r.value() or b"") for r in records]
            await conn.execute(RECORD_FETCH, *columns(envelopes))
            consumer.commit(asynchronous=False)
            seen += len(records)
        await asyncio.Event().wait()  # done; SIGTERM ends the process
    finally:
        consumer.close()
        await conn.close()


def main() -> None:
    """Parses the command line and runs the loop."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(run(Settings.from_env(), args.topic, args.group, args.count))


if __name__ == "__main__":
    main()
