"""Failures walk the retry chain to the DLQ, and never block the queue."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
from confluent_kafka import Producer as KafkaProducer

from conveyor import JobContext, PermanentError, Producer, Settings, Worker
from conveyor.consumer.failures import RetryPolicy
from conveyor.jobstore import JobStore
from conveyor.schemas.contracts import DLQ_RECORD
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology
from tests.kafka_helpers import read_topic
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running

FAST = RetryPolicy(initial=0.2, multiplier=2.0, maximum=1.0, jitter=0.0)


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


def dlq_records(s: Settings, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    topic = Topology.from_settings(s).dlq_topic
    records = read_topic(s.kafka_bootstrap, topic, count, timeout=timeout)
    with Serde(s) as serde:
        return [serde.decode(DLQ_RECORD, topic, r.value) for r in records]


async def test_permanent_and_validation_failures_go_to_the_dlq_after_one_attempt(
    live: Settings,
) -> None:
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)
    calls: list[str] = []

    @worker.handler("charge.card", retry=FAST)
    async def charge(ctx: JobContext, payload: Any) -> None:
        calls.append(ctx.job_id)
        raise PermanentError("card declined")

    @worker.handler(
        "user.import",
        schema={"type": "record", "name": "User", "fields": [{"name": "email", "type": "string"}]},
    )
    async def import_user(ctx: JobContext, payload: Any) -> None:
        calls.append(ctx.job_id)

    with Producer(live) as producer:
        permanent = producer.submit("charge.card", {})
        # Sent as JSON by a producer that does not know the type's schema: it fails the
        # handler's contract when the worker decodes it.
        invalid = producer.submit("user.import", {"email": 42})
    async with running(worker), JobStore(live) as store:
        await eventually(lambda: worker.stats.dead_lettered == 2, what="2 dead letters")
        states = {j: (await store.status(j)).state for j in (permanent, invalid)}
    assert states == {permanent: "failed", invalid: "failed"}
    assert calls == [permanent]  # the invalid payload never reached its handler
    by_job = {str(r["job_id"]): r for r in dlq_records(live, 2)}
    assert by_job[permanent]["error_reason"] == "Permanent"
    assert by_job[invalid]["error_reason"] == "Validation"
    assert [r["attempts"] for r in by_job.values()] == [1, 1]
    assert by_job[permanent]["error_history"][0]["message"] == "card declined"


async def test_garbage_bytes_go_to_the_dlq_and_the_next_jobs_still_run(live: Settings) -> None:
    # The second value names schema id 10000, which the registry does not know: it is
    # dead-lettered once unknown_schema_wait has passed (a lagging follower gets that long).
    options = dataclasses.replace(TEST_OPTIONS, unknown_schema_wait=1.0)
    worker = Worker(live, priorities=["normal"], concurrency=4, options=options)
    done: list[int] = []

    @worker.handler("after.garbage")
    async def after(ctx: JobContext, payload: dict[str, int]) -> None:
        done.append(payload["n"])

    topic = Topology.from_settings(live).job_topic("normal")
    raw = KafkaProducer({"bootstrap.servers": live.kafka_bootstrap})
    for garbage in (b"not avro at all", b"\x00\x00\x00\x27\x10xx", b""):
        raw.produce(topic, value=garbage, key=b"same-key", partition=0)
    raw.flush(10)
    with Producer(live) as producer:
        for n in range(5):
            producer.submit("after.garbage", {"n": n}, key="same-key")
    async with running(worker), JobStore(live) as store:
        await eventually(lambda: len(done) == 5, what="the jobs after the garbage")
        await eventually(lambda: worker.stats.dead_lettered == 3, what="3 dead letters")

        async def three_rows() -> bool:
            return len(await store.dlq_list()) == 3

        await eventually(three_rows, what="3 job_dlq rows")
        entries = await store.dlq_list()
    assert {e.error_reason for e in entries} == {"Deserialization"}
    assert {e.original_job_id for e in entries} == {None}
    records = dlq_records(live, 3)
    assert {r["error_reason"] for r in records} == {"Deserialization"}
    assert {r["job_id"] for r in records} == {None}
    assert sorted(r["payload"] for r in records) == sorted(
        [b"not avro at all", b"\x00\x00\x00\x27\x10xx", b""]
    )
    assert {(r["source_topic"], r["source_partition"]) for r in records} == {(topic, 0)}


async def test_one_poison_job_among_a_thousand_leaves_the_rest_complete(live: Settings) -> None:
    worker = Worker(live, priorities=["normal"], concurrency=16, options=TEST_OPTIONS)

    @worker.handler("bulk.item", max_attempts=1)
    async def item(ctx: JobContext, payload: dict[str, int]) -> int:
        if payload["n"] == 500:
            raise RuntimeError("poison")
        return payload["n"]

    with Producer(live) as producer:
        producer.submit("bulk.item", [{"n": n} for n in range(1000)])
    async with running(worker):
        await eventually(
            lambda: worker.stats.completed + worker.stats.failed == 1000,
            timeout=120,
            what="1000 outcomes",
        )
    assert (worker.stats.completed, worker.stats.dead_lettered) == (999, 1)
    [record] = dlq_records(live, 1)
    assert record["error_reason"] == "MaxRetries"


async def test_an_ordering_key_failure_holds_only_its_own_key(live: Settings) -> None:
    """Key A retries in place; key B on the same partition keeps flowing; A stays in order."""
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)
    log: list[tuple[str, int, float]] = []
    failed_once: set[int] = set()
    policy = RetryPolicy(initial=1.0, jitter=0.0)

    @worker.handler("ledger.post", ordering="key", retry=policy)
    async def post(ctx: JobContext, payload: dict[str, Any]) -> None:
        if payload["key"] == "A" and payload["seq"] == 0 and 0 not in failed_once:
            failed_once.add(0)
            raise RuntimeError("transient")
        log.append((payload["key"], payload["seq"], time.monotonic()))

    with Producer(live) as producer:
        for seq in range(3):
            for key in ("A", "B"):
                # Both keys on one partition: the default key picks the partition, so use
                # a job key and carry the logical key in the payload.
                producer.submit("ledger.post", {"key": key, "seq": seq}, key=f"{key}-entity")
    async with running(worker):
        await eventually(lambda: len(log) == 6, what="6 postings")
    a = [(seq, t) for key, seq, t in log if key == "A"]
    b = [(seq, t) for key, seq, t in log if key == "B"]
    assert [seq for seq, _ in a] == [0, 1, 2]
    assert [seq for seq, _ in b] == [0, 1, 2]
    # B finished while A was waiting out its 1 s backoff.
    assert b[-1][1] < a[0][1]
    assert worker.stats.retried == 1
