"""The whole chain inside one worker: retry topics, relay, DLQ sink, JobFailed, replay."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from conveyor import JobContext, Producer, Settings, Worker
from conveyor.consumer.failures import RetryPolicy
from conveyor.errors import ReplayRefused
from conveyor.jobstore import JobStore
from conveyor.schemas.contracts import JOB_EVENT
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology
from tests.kafka_helpers import read_topic
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running

#: 0.5 s, then 1 s, then 2 s between attempts: short, but long enough to measure.
POLICY = RetryPolicy(max_attempts=3, initial=0.5, multiplier=2.0, maximum=5.0, jitter=0.0)


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


async def test_a_job_failing_twice_then_succeeding_completes_after_measured_backoff(
    live: Settings,
) -> None:
    worker = Worker(live, priorities=["high"], concurrency=4, options=TEST_OPTIONS)
    attempts: list[tuple[int, float]] = []

    @worker.handler("flaky.call", retry=POLICY)
    async def flaky(ctx: JobContext, payload: Any) -> str:
        attempts.append((ctx.attempt, time.monotonic()))
        if ctx.attempt < 3:
            raise ConnectionError(f"upstream down (attempt {ctx.attempt})")
        return "ok"

    with Producer(live) as producer:
        job_id = producer.submit("flaky.call", {}, priority="high")
    async with running(worker), JobStore(live) as store:
        await eventually(lambda: _state_is(store, job_id, "complete"), timeout=60, what="complete")
        status = await store.status(job_id)
    assert [a for a, _ in attempts] == [1, 2, 3]
    assert status.attempts == 3
    states = [(t.state, t.attempt) for t in status.history]
    assert states == [
        ("queued", 1),
        ("processing", 1),
        ("queued", 1),
        ("processing", 2),
        ("queued", 2),
        ("processing", 3),
        ("complete", 3),
    ]
    # Each wait is the policy's delay plus the relay hop and a re-claim: never less,
    # and nowhere near a multiple of it (a 1 s retry must not take 10 s).
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(attempts)]
    for gap, expected in zip(gaps, (0.5, 1.0), strict=True):
        assert expected - 0.05 <= gap <= expected + 1.0, (gaps, expected)


async def test_a_job_that_always_fails_lands_in_the_dlq_once_with_one_event(live: Settings) -> None:
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)

    @worker.handler("doomed.call", retry=POLICY)
    async def doomed(ctx: JobContext, payload: Any) -> None:
        raise RuntimeError(f"boom {ctx.attempt}")

    with Producer(live) as producer:
        job_id = producer.submit("doomed.call", {"x": 1}, tenant_id="acme")
    async with running(worker), JobStore(live) as store:
        await eventually(lambda: _dlq_has(store, job_id), timeout=60, what="the DLQ row")
        entries = [e for e in await store.dlq_list() if str(e.original_job_id) == job_id]
        status = await store.status(job_id)
    [entry] = entries
    assert entry.error_reason == "MaxRetries"
    assert entry.attempts == 3
    assert [e["message"] for e in entry.error_history] == ["boom 1", "boom 2", "boom 3"]
    assert entry.tenant_id == "acme"
    assert status.state == "failed"
    events_topic = Topology.from_settings(live).events_topic
    records = read_topic(live.kafka_bootstrap, events_topic, 2, timeout=5)
    with Serde(live) as serde:
        events = [serde.decode(JOB_EVENT, events_topic, r.value) for r in records]
    failed = [e for e in events if e["kind"] == "JobFailed" and str(e["job_id"]) == job_id]
    assert len(failed) == 1
    assert (failed[0]["dlq_id"], failed[0]["attempts"]) == (entry.id, 3)
    assert failed[0]["error_reason"] == "MaxRetries"


async def test_replay_completes_the_job_and_a_second_replay_is_refused(live: Settings) -> None:
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)
    healed = False

    @worker.handler("fixable.call", max_attempts=1)
    async def fixable(ctx: JobContext, payload: Any) -> str:
        if not healed:
            raise RuntimeError("bug in the handler")
        return "fixed"

    with Producer(live) as producer:
        job_id = producer.submit("fixable.call", {"n": 7})
    async with running(worker), JobStore(live) as store:
        await eventually(lambda: _dlq_has(store, job_id), timeout=60, what="the DLQ row")
        [entry] = [e for e in await store.dlq_list() if str(e.original_job_id) == job_id]
        healed = True  # the fix is deployed
        assert await store.replay(entry.id) == job_id
        await eventually(lambda: _state_is(store, job_id, "complete"), timeout=60, what="replayed")
        with pytest.raises(ReplayRefused):
            await store.replay(entry.id)
        status = await store.status(job_id)
    assert status.result == "fixed"
    states = [t.state for t in status.history]
    assert states[:3] == ["queued", "processing", "failed"]
    assert states[-2:] == ["processing", "complete"]


async def _state_is(store: JobStore, job_id: str, state: str) -> bool:
    return (await store.status(job_id)).state == state


async def _dlq_has(store: JobStore, job_id: str) -> bool:
    return any(str(e.original_job_id) == job_id for e in await store.dlq_list())
