"""The DLQ sink against the real broker, registry and Postgres: one job_dlq row and one
JobFailed event per dead job, the job marked failed, and nothing blocks the partition.

DLQ records are written to the DLQ topic by the test itself, with the Serde and a plain
confluent-kafka producer, as a worker would write them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conveyor import db
from conveyor.consumer.dlq_sink import DlqSink
from conveyor.consumer.job import JobMessage
from conveyor.consumer.status import StatusStore
from conveyor.jobstore import JobStore
from conveyor.schemas import contracts
from conveyor.schemas.contracts import DLQ_RECORD, JOB_EVENT
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology
from tests.kafka_helpers import read_topic
from tests.worker_helpers import eventually, prepare

SUBMITTED = dt.datetime(2024, 5, 17, 12, 0, 0, tzinfo=dt.UTC)
DEAD_AT = dt.datetime(2024, 5, 17, 12, 5, 0, tzinfo=dt.UTC)


def attempt_errors(count: int) -> list[dict[str, Any]]:
    """The AttemptError records of ``count`` failed attempts, a minute apart."""
    return [
        {
            "attempt": n,
            "error_type": "ConnectionError",
            "message": f"smtp down ({n})",
            "traceback": f"Traceback (attempt {n})",
            "at": SUBMITTED + dt.timedelta(minutes=n),
        }
        for n in range(1, count + 1)
    ]


def dead_record(job_id: str | None, *, offset: int, attempts: int = 3) -> dict[str, Any]:
    """A DlqRecord as a worker publishes it for a job that used up its attempts."""
    return {
        "job_id": job_id,
        "type": "email.send" if job_id else None,
        "key": "user-1" if job_id else None,
        "priority": "high" if job_id else None,
        "tenant_id": "acme" if job_id else None,
        "batch_id": str(uuid.uuid4()) if job_id else None,
        "dedupe_key": None,
        "payload": b'{"to": "a@example.com"}' if job_id else b"\xffnot-avro",
        "content_type": "application/json" if job_id else "application/octet-stream",
        "max_attempts": attempts if job_id else None,
        "duration": "short" if job_id else None,
        "submitted_at": SUBMITTED if job_id else None,
        "error_reason": "MaxRetries" if job_id else "Deserialization",
        "attempts": attempts,
        "error_history": attempt_errors(attempts),
        "source_topic": "t.jobs.high",
        "source_partition": 1,
        "source_offset": offset,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "dead_at": DEAD_AT,
    }


def produce(settings: Settings, values: list[bytes]) -> list[int]:
    """Writes raw values to partition 0 of the DLQ topic, in order; returns their offsets."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
    topic = Topology.from_settings(settings).dlq_topic
    offsets: list[int] = []

    def on_delivery(err: Any, msg: Any) -> None:
        offsets.append(-1 if err is not None else msg.offset())

    for value in values:
        producer.produce(topic, value=value, key=b"dlq", partition=0, on_delivery=on_delivery)
    assert producer.flush(15) == 0
    assert len(offsets) == len(values)
    assert min(offsets) >= 0
    return offsets


def committed_offset(settings: Settings, group: str) -> int:
    """The offset the group committed on partition 0 of the DLQ topic."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "log_level": 0}
    )
    try:
        topic = Topology.from_settings(settings).dlq_topic
        [found] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(found.offset)
    finally:
        consumer.close()


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    return await prepare(settings, schema_registry_url)


@pytest.fixture
async def pool(live: Settings) -> AsyncIterator[asyncpg.Pool[Any]]:
    created = await db.create_pool(live, max_size=4)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
def serde(live: Settings) -> Iterator[Serde]:
    with Serde(live) as opened:
        yield opened


@pytest.fixture
async def sink(live: Settings, pool: asyncpg.Pool[Any], serde: Serde) -> AsyncIterator[DlqSink]:
    """A running sink with test-friendly Kafka timeouts; stopped after the test."""
    running = DlqSink(
        live,
        pool=pool,
        serde=serde,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        fetch_timeout_ms=100,
    )
    await running.start()
    stop = asyncio.Event()
    task = asyncio.create_task(running.run(stop))
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def encode(serde: Serde, settings: Settings, record: dict[str, Any]) -> bytes:
    return serde.encode(DLQ_RECORD, Topology.from_settings(settings).dlq_topic, record)


async def published(pool: asyncpg.Pool[Any], source_offset: int) -> bool:
    """Whether the row of the dead job read from ``source_offset`` has its event out."""
    return bool(
        await pool.fetchval(
            "SELECT event_published_at IS NOT NULL FROM job_dlq WHERE source_offset = $1",
            source_offset,
        )
    )


async def test_one_row_and_one_job_failed_event_per_dead_job_even_when_redelivered(
    live: Settings, pool: asyncpg.Pool[Any], serde: Serde, sink: DlqSink
) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    record = dead_record(first, offset=10)
    value = encode(serde, live, record)
    # The same message twice (a redelivery), then another dead job behind it.
    produce(live, [value, value, encode(serde, live, dead_record(second, offset=11))])

    await eventually(lambda: published(pool, 11), what="the second dead job's event")

    rows = await pool.fetch("SELECT * FROM job_dlq ORDER BY id")
    assert [(str(r["original_job_id"]), r["source_offset"]) for r in rows] == [
        (first, 10),
        (second, 11),
    ]
    row = rows[0]
    assert (row["type"], row["key"], row["priority"], row["tenant_id"]) == (
        "email.send",
        "user-1",
        "high",
        "acme",
    )
    assert bytes(row["payload"]) == record["payload"]
    assert (row["error_reason"], row["attempts"], row["dlq_at"]) == ("MaxRetries", 3, DEAD_AT)
    assert (row["batch_id"], row["max_attempts"], row["duration"]) == (
        record["batch_id"],
        3,
        "short",
    )
    assert (row["source_topic"], row["source_partition"]) == ("t.jobs.high", 1)
    assert json.loads(row["error_history"]) == [
        {**e, "at": e["at"].isoformat()} for e in record["error_history"]
    ]
    assert (sink.stats.inserted, sink.stats.duplicates, sink.stats.events_published) == (2, 1, 2)

    # Everything the sink published is acknowledged by now; ask for one more than expected.
    topic = Topology.from_settings(live).events_topic
    events = await asyncio.to_thread(read_topic, live.kafka_bootstrap, topic, 3, timeout=3.0)
    decoded = {
        str(e["job_id"]): (r.key, e)
        for r in events
        for e in [serde.decode(JOB_EVENT, topic, r.value)]
    }
    assert sorted(decoded) == sorted([first, second])
    key, event = decoded[first]
    assert key == first.encode()
    assert event["kind"] == "JobFailed"
    assert (event["type"], event["tenant_id"], event["priority"]) == ("email.send", "acme", "high")
    assert (event["attempt"], event["attempts"], event["dlq_id"]) == (3, 3, row["id"])
    assert (event["error_reason"], event["error_message"]) == ("MaxRetries", "smtp down (3)")
    assert event["error_history"] == record["error_history"]
    assert event["failed_at"] == DEAD_AT


async def test_the_dead_job_becomes_failed_unless_it_ended_or_its_worker_holds_the_lease(
    live: Settings, pool: asyncpg.Pool[Any], serde: Serde, sink: DlqSink
) -> None:
    crashed, running, done, unseen = (str(uuid.uuid4()) for _ in range(4))
    # A worker that died right after its DLQ publish: its lease has run out.
    dead_worker = StatusStore(pool, worker_id="worker-a", lease_seconds=0.001)
    assert not isinstance(await dead_worker.claim(job_message(crashed)), str)
    live_worker = StatusStore(pool, worker_id="worker-b")
    assert not isinstance(await live_worker.claim(job_message(running)), str)
    lease = await live_worker.claim(job_message(done))
    assert not isinstance(lease, str)
    async with pool.acquire() as conn:
        await live_worker.complete(lease, {"ok": True}, conn)
    jobs = (crashed, running, done, unseen)
    produce(live, [encode(serde, live, dead_record(j, offset=n)) for n, j in enumerate(jobs)])

    await eventually(lambda: published(pool, 3), what="the last dead job's event")

    async with JobStore(live) as store:
        failed, held, kept, recorded = [await store.status(j) for j in jobs]
    expected_error = {
        "type": "ConnectionError",
        "message": "smtp down (3)",
        "traceback": "Traceback (attempt 3)",
        "attempt": 3,
        "at": (SUBMITTED + dt.timedelta(minutes=3)).isoformat(),
        "reason": "MaxRetries",
    }
    assert (failed.state, failed.attempts, failed.last_error) == ("failed", 3, expected_error)
    assert [t.state for t in failed.history] == ["queued", "processing", "failed"]
    assert failed.history[-1].error == expected_error
    assert (held.state, [t.state for t in held.history]) == ("processing", ["queued", "processing"])
    assert (kept.state, [t.state for t in kept.history]) == (
        "complete",
        ["queued", "processing", "complete"],
    )
    assert (recorded.state, recorded.type, recorded.attempts) == ("failed", "email.send", 3)
    assert [t.state for t in recorded.history] == ["failed"]
    assert sink.stats.jobs_failed == 2


def job_message(job_id: str) -> JobMessage:
    """A job as the worker decodes it before claiming it."""
    return JobMessage(
        job_id=job_id,
        type="email.send",
        key="user-1",
        priority="high",
        payload=b"{}",
        content_type="application/json",
        tenant_id="acme",
        batch_id=None,
        dedupe_key=None,
        attempt=3,
        max_attempts=3,
        submitted_at=SUBMITTED,
        not_before=None,
        duration="short",
        errors=[],
        topic="t.jobs.high",
        partition=1,
        offset=0,
        headers={},
    )


async def test_garbage_is_skipped_undecodable_jobs_get_no_event_and_a_lost_event_is_resent(
    live: Settings, pool: asyncpg.Pool[Any], serde: Serde, sink: DlqSink
) -> None:
    # A row stored by a sink that crashed before publishing its event.
    orphan = str(uuid.uuid4())
    await pool.execute(
        "INSERT INTO job_dlq (original_job_id, type, payload, error_reason, attempts, "
        "error_history, source_topic, source_partition, source_offset) "
        "VALUES ($1, 'email.send', '\\x7b7d', 'Permanent', 1, '[]', 't.jobs.high', 1, 21)",
        orphan,
    )
    orphan_record = dead_record(orphan, offset=21, attempts=1)
    orphan_record["error_reason"] = "Permanent"
    values = [
        b"garbage, not wire format",
        encode(serde, live, dead_record(None, offset=20, attempts=1)),
        encode(serde, live, orphan_record),
        encode(serde, live, dead_record(str(uuid.uuid4()), offset=22)),
    ]
    offsets = produce(live, values)

    await eventually(lambda: published(pool, 22), what="the last dead job's event")

    rows = await pool.fetch(
        "SELECT original_job_id, error_reason, event_published_at IS NOT NULL AS sent "
        "FROM job_dlq ORDER BY source_offset"
    )
    assert [(r["error_reason"], r["sent"]) for r in rows] == [
        ("Deserialization", False),
        ("Permanent", True),
        ("MaxRetries", True),
    ]
    assert rows[0]["original_job_id"] is None
    assert (sink.stats.undecodable, sink.stats.handled, sink.stats.events_published) == (1, 4, 2)
    topic = Topology.from_settings(live).events_topic
    events = await asyncio.to_thread(read_topic, live.kafka_bootstrap, topic, 3, timeout=3.0)
    kinds = sorted(serde.decode(JOB_EVENT, topic, r.value)["error_reason"] for r in events)
    assert kinds == ["MaxRetries", "Permanent"]
    # Every message, the garbage included, is committed: a restart reads none again.
    committed = await asyncio.to_thread(committed_offset, live, sink.group_id)
    assert committed == max(offsets) + 1


async def test_a_record_postgres_refuses_is_stored_cleaned_and_announced_not_skipped(
    live: Settings,
    pool: asyncpg.Pool[Any],
    serde: Serde,
    sink: DlqSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NUL in its texts (refused by text and jsonb) and a reason from a newer worker that
    this schema never heard of: the dead job still gets its row and its JobFailed event."""
    job_id = str(uuid.uuid4())
    record = {
        **dead_record(job_id, offset=40),
        "type": "email\x00send",
        "key": "user\x00-1",
        "error_reason": "QuotaExceeded",
        "error_history": [{**e, "message": "bad\x00byte"} for e in attempt_errors(3)],
    }
    # Encoded as a newer worker would, whose set of reasons has one this version lacks.
    newer = (*contracts.ERROR_REASONS, "QuotaExceeded")
    with monkeypatch.context() as patch:
        patch.setitem(contracts.DLQ_RECORD.choices, "error_reason", newer)
        value = encode(serde, live, record)
    produce(live, [value])

    await eventually(lambda: published(pool, 40), what="the event of the refused record")
    row = await pool.fetchrow("SELECT * FROM job_dlq WHERE source_offset = 40")
    assert row is not None
    assert (str(row["original_job_id"]), row["error_reason"]) == (job_id, "QuotaExceeded")
    assert (row["type"], row["key"]) == ("email\\x00send", "user\\x00-1")
    assert [e["message"] for e in json.loads(row["error_history"])] == ["bad\\x00byte"] * 3
    assert sink.stats.cleaned == 1


async def test_a_revoke_waits_for_the_message_in_hand_so_its_job_failed_goes_out_once(
    live: Settings,
    pool: asyncpg.Pool[Any],
    serde: Serde,
    sink: DlqSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sink is publishing a JobFailed when its partition is revoked. The revoke waits
    until that message is stored, announced and committed, and stops the sink from
    starting another; so the next owner starts after it, and does not find the row with
    its event not yet marked out and publish it a second time."""
    entered = asyncio.Event()
    release = asyncio.Event()
    publish = sink._publish

    async def slow_publish(record: Any, dlq_id: int) -> None:
        entered.set()
        await release.wait()
        await publish(record, dlq_id)

    monkeypatch.setattr(sink, "_publish", slow_publish)
    job_id = str(uuid.uuid4())
    [offset, behind] = produce(
        live,
        [
            encode(serde, live, dead_record(job_id, offset=20)),
            encode(serde, live, dead_record(str(uuid.uuid4()), offset=21)),
        ],
    )
    await asyncio.wait_for(entered.wait(), 60)
    consumer = sink._consumer
    assert consumer is not None
    try:
        revoking = asyncio.create_task(sink._release(set(consumer.assignment())))
        # An observation window, not a wait for a result: the revoke holds the partition.
        done, _ = await asyncio.wait({revoking}, timeout=1.0)
        assert not done, "the revoke let the partition go with a message in hand"
    finally:
        release.set()
    await asyncio.wait_for(revoking, 30)
    assert committed_offset(live, sink.group_id) == offset + 1
    assert await published(pool, 20)
    assert sink.stats.events_published == 1
    assert not await published(pool, 21), "a message of a revoked partition was started"

    # The next owner of the partition takes over from there: one event per dead job.
    other = DlqSink(live, pool=pool, serde=serde, session_timeout_ms=6000, fetch_timeout_ms=100)
    await other.start()
    stop = asyncio.Event()
    task = asyncio.create_task(other.run(stop))
    try:
        await eventually(lambda: published(pool, 21), what="the next owner's event")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    events_topic = Topology.from_settings(live).events_topic
    events = read_topic(live.kafka_bootstrap, events_topic, 3, timeout=5)
    keys = sorted(e.key for e in events if e.key is not None)
    assert keys.count(job_id.encode()) == 1
    assert behind == offset + 1
