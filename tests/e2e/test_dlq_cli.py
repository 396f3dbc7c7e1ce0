"""``conveyor dlq list|show|replay``, ``conveyor purge`` and ``conveyor dlq-sink`` as
subprocesses with only CONVEYOR_* variables set.

Entries are arranged in ``job_dlq`` in-process; ``dlq-sink`` gets a DLQ record written to
its topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer

from conveyor import db
from conveyor.schemas.contracts import DLQ_RECORD
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology
from tests.conftest import CliResult, run_cli, settings_env
from tests.worker_helpers import eventually, prepare

DLQ_AT = dt.datetime(2024, 5, 17, 12, 5, 0, tzinfo=dt.UTC)
HISTORY = [
    {
        "attempt": n,
        "error_type": "ConnectionError",
        "message": f"smtp down ({n})",
        "traceback": f'File "app.py", line {n}',
        "at": f"2024-05-17T12:0{n}:00+00:00",
    }
    for n in (1, 2)
]

_INSERT = """
INSERT INTO job_dlq (
    original_job_id, tenant_id, type, payload, content_type, error_reason, attempts,
    error_history, dlq_at, source_topic, source_partition, source_offset, priority
)
VALUES ($1, 'acme', $2, $3, $4, $5, 2, $6::text::jsonb, $7, 't.jobs.normal', 0,
        (SELECT count(*) FROM job_dlq), 'normal')
RETURNING id
"""


async def insert_entry(
    pool: asyncpg.Pool[Any],
    job_type: str | None = "email.send",
    *,
    payload: bytes = b'{"to": "a@example.com"}',
) -> int:
    """Stores a DLQ entry; ``job_type=None`` makes it an undecodable message."""
    job_id = None if job_type is None else str(uuid.uuid4())
    content_type = "application/json" if job_type else "application/octet-stream"
    reason = "MaxRetries" if job_type else "Deserialization"
    entry_id: int = await pool.fetchval(
        _INSERT, job_id, job_type, payload, content_type, reason, json.dumps(HISTORY), DLQ_AT
    )
    return entry_id


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    return await prepare(settings, schema_registry_url)


@pytest.fixture
async def pool(migrated: Settings) -> AsyncIterator[asyncpg.Pool[Any]]:
    created = await db.create_pool(migrated, max_size=2)
    try:
        yield created
    finally:
        await created.close()


async def cli(*args: str, settings: Settings) -> CliResult:
    return await asyncio.to_thread(run_cli, *args, env=settings_env(settings))


async def test_dlq_list_show_and_replay_from_the_cli(
    live: Settings, pool: asyncpg.Pool[Any]
) -> None:
    entry = await insert_entry(pool)
    raw = await insert_entry(pool, None, payload=b"\xff\x00")
    job_id = str(await pool.fetchval("SELECT original_job_id FROM job_dlq WHERE id = $1", entry))

    table, listed, shown, shown_json = await asyncio.gather(
        cli("dlq", "list", settings=live),
        cli("dlq", "list", "--type", "email.send", "--json", settings=live),
        cli("dlq", "show", str(entry), settings=live),
        cli("dlq", "show", str(raw), "--json", settings=live),
    )

    assert (table.code, table.stderr) == (0, "")
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "ID",
        "DLQ",
        "AT",
        "TYPE",
        "REASON",
        "ATTEMPTS",
        "JOB",
        "ID",
        "REPLAYED",
    ]
    assert [row.split() for row in rows] == [
        [str(entry), "2024-05-17T12:05:00+00:00", "email.send", "MaxRetries", "2", job_id, "-"],
        [str(raw), "2024-05-17T12:05:00+00:00", "-", "Deserialization", "2", "-", "-"],
    ]
    assert listed.code == 0
    [as_json] = json.loads(listed.stdout)
    assert (as_json["id"], as_json["original_job_id"], as_json["payload"]) == (
        entry,
        job_id,
        {"to": "a@example.com"},
    )
    assert as_json["error_history"] == HISTORY
    assert shown.code == 0
    assert f"DLQ entry {entry}: MaxRetries, pending" in shown.stdout
    assert "attempt 2  2024-05-17T12:02:00+00:00  ConnectionError: smtp down (2)" in shown.stdout
    assert 'File "app.py", line 2' in shown.stdout
    assert shown_json.code == 0
    assert json.loads(shown_json.stdout)["payload_base64"] == "/wA="

    replayed = await cli("dlq", "replay", str(entry), settings=live)
    assert (replayed.code, replayed.stdout.strip()) == (0, job_id)

    again, undecodable, missing, pending = await asyncio.gather(
        cli("dlq", "replay", str(entry), settings=live),
        cli("dlq", "replay", str(raw), settings=live),
        cli("dlq", "show", "999999", settings=live),
        cli("dlq", "list", "--json", settings=live),
    )
    for refused in (again, undecodable, missing):
        assert refused.code == 1
        assert len(refused.stderr.strip().splitlines()) == 1
    assert again.stderr.startswith(f"conveyor: error: DLQ entry {entry} was already replayed at")
    assert f"DLQ entry {raw} holds an undecodable message" in undecodable.stderr
    assert "DLQ entry 999999 does not exist" in missing.stderr
    assert [e["id"] for e in json.loads(pending.stdout)] == [raw]


async def test_dlq_show_and_replay_accept_the_job_id_as_well_as_the_entry_number(
    live: Settings, pool: asyncpg.Pool[Any]
) -> None:
    entry = await insert_entry(pool)
    job_id = str(await pool.fetchval("SELECT original_job_id FROM job_dlq WHERE id = $1", entry))

    shown = await cli("dlq", "show", job_id, settings=live)
    assert shown.code == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == f"DLQ entry {entry}: MaxRetries, pending"
    replayed = await cli("dlq", "replay", job_id, settings=live)
    assert (replayed.code, replayed.stdout) == (0, f"{job_id}\n"), replayed.stderr
    again = await cli("dlq", "show", job_id, settings=live)
    assert again.stdout.splitlines()[0].startswith(f"DLQ entry {entry}: MaxRetries, replayed at")

    unknown = str(uuid.uuid4())
    missing = await cli("dlq", "show", unknown, settings=live)
    assert missing.code == 1
    assert missing.stderr.startswith(f"conveyor: error: job {unknown} has no DLQ entry")
    garbage = await cli("dlq", "replay", "entry-7", settings=live)
    assert garbage.code == 2
    assert "expected an entry number or a job id, got 'entry-7'" in garbage.stderr


async def test_dlq_replay_all_of_a_type_prints_each_job_id_and_a_progress_bar(
    live: Settings, pool: asyncpg.Pool[Any]
) -> None:
    entries = [await insert_entry(pool, "report.build") for _ in range(3)]
    other = await insert_entry(pool, "email.send")

    result = await cli("dlq", "replay", "--type", "report.build", "--all", settings=live)

    assert result.code == 0, result.stderr
    rows = await pool.fetch(
        "SELECT id, original_job_id, replayed_at FROM job_dlq ORDER BY id", timeout=10
    )
    expected = [str(r["original_job_id"]) for r in rows if r["id"] in entries]
    assert result.stdout.split() == expected
    assert [r["id"] for r in rows if r["replayed_at"] is not None] == entries
    assert other not in [r["id"] for r in rows if r["replayed_at"] is not None]
    assert "[####################] 3/3" in result.stderr
    assert "replayed 3 job(s) of type report.build" in result.stderr

    usage = await cli("dlq", "replay", "--all", settings=live)
    assert usage.code == 2
    assert "--all needs --type" in usage.stderr


async def test_purge_prints_what_it_deleted(migrated: Settings, pool: asyncpg.Pool[Any]) -> None:
    entry = await insert_entry(pool)
    await pool.execute(
        "UPDATE job_dlq SET replayed_at = now() - interval '31 days' WHERE id = $1", entry
    )
    await insert_entry(pool)

    result = await cli("purge", settings=migrated)

    assert (result.code, result.stdout.strip()) == (
        0,
        "purged 0 finished job(s) and 1 replayed DLQ entry(ies)",
    )
    assert await pool.fetchval("SELECT count(*) FROM job_dlq") == 1


async def test_dlq_sink_stores_a_dead_job_and_exits_cleanly_on_sigterm(
    live: Settings, pool: asyncpg.Pool[Any]
) -> None:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "conveyor",
        "dlq-sink",
        env={**base, **settings_env(live)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert first.decode().startswith("dlq-sink: consuming")
        job_id = str(uuid.uuid4())
        await asyncio.to_thread(produce_dead_job, live, job_id)

        await eventually(
            lambda: pool.fetchval(
                "SELECT event_published_at IS NOT NULL FROM job_dlq WHERE original_job_id = $1",
                job_id,
            ),
            what="the sink to store the dead job and publish its event",
        )

        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    assert "1 row(s) stored, 0 duplicate(s), 1 JobFailed event(s)" in stdout.decode()


def produce_dead_job(settings: Settings, job_id: str) -> None:
    """Writes one DlqRecord to the DLQ topic, as a worker does after the last attempt."""
    topic = Topology.from_settings(settings).dlq_topic
    record = {
        "job_id": job_id,
        "type": "email.send",
        "payload": b"{}",
        "error_reason": "Permanent",
        "attempts": 1,
        "source_topic": "t.jobs.normal",
        "source_partition": 0,
        "source_offset": 0,
        "dead_at": DLQ_AT,
    }
    with Serde(settings) as serde:
        value = serde.encode(DLQ_RECORD, topic, record)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
    producer.produce(topic, value=value, key=job_id.encode())
    assert producer.flush(15) == 0
