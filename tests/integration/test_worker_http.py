"""The worker's /metrics counts a known workload exactly; /healthz and /readyz tell the truth."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from confluent_kafka import KafkaError
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from conveyor import JobContext, PermanentError, Producer, Settings, Worker, embedded
from conveyor.consumer import probes
from conveyor.consumer.failures import RetryPolicy
from conveyor.consumer.relay import RetryRelay
from conveyor.ledger import Ledger
from conveyor.topology.model import Topology
from tests.kafka_helpers import read_topic
from tests.tcp_proxy import TcpProxy
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running

FAST = RetryPolicy(initial=0.2, multiplier=2.0, maximum=1.0, jitter=0.0)
OPTIONS = dataclasses.replace(TEST_OPTIONS, metrics_host="127.0.0.1", metrics_interval=0.2)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    prepared = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    return prepared.replace(metrics_port=embedded.free_port())


async def get(url: str) -> httpx.Response:
    # From a thread: the probes run on this event loop, which must stay free to answer.
    return await asyncio.to_thread(httpx.get, url, timeout=30)


async def scrape(worker: Worker) -> Samples:
    response = await get(f"http://127.0.0.1:{worker.http_port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def submitted(job_type: str) -> float:
    labels = {"type": job_type, "priority": "normal"}
    return REGISTRY.get_sample_value("conveyor_jobs_submitted_total", labels) or 0.0


def workload_worker(live: Settings, gate: asyncio.Event) -> Worker:
    """A worker whose handlers succeed, fail once, always fail, or wait for ``gate``."""
    worker = Worker(live, priorities=["normal"], concurrency=8, options=OPTIONS)

    @worker.handler("ok.job")
    async def ok(ctx: JobContext, payload: Any) -> None:
        return None

    @worker.handler("flaky.job", retry=FAST)
    async def flaky(ctx: JobContext, payload: Any) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    @worker.handler("bad.job")
    async def bad(ctx: JobContext, payload: Any) -> None:
        raise PermanentError("never works")

    @worker.handler("gate.job")
    async def gated(ctx: JobContext, payload: Any) -> None:
        await gate.wait()

    return worker


async def gated_partition_records(settings: Settings) -> int:
    """How many records the ``normal`` topic holds in the partition of the key ``gate``:
    the workload's 20 submitted jobs and the relay's 2 republished retries, all there once
    every job but the gated ones is final."""
    topic = Topology.from_settings(settings).job_topic("normal")
    records = await asyncio.to_thread(read_topic, settings.kafka_bootstrap, topic, 22, timeout=10)
    assert len(records) == 22
    [partition] = {r.partition for r in records if r.key == b"gate"}
    return sum(1 for r in records if r.partition == partition)


async def test_metrics_count_a_known_workload_exactly(live: Settings, on_kafka: bool) -> None:
    gate = asyncio.Event()
    worker = workload_worker(live, gate)

    ok_before = submitted("ok.job")
    with Producer(live) as producer:
        # One batch each, so the lag holds them even where a broker counts batches.
        for n in range(3):
            producer.submit("gate.job", {"n": n}, key="gate", wait=True)
        for n in range(9):
            producer.submit("ok.job", {"n": n})
        producer.submit("ok.job", {"n": 9}, dedupe_key="once")
        producer.submit("ok.job", {"n": 9}, dedupe_key="once")  # a duplicate: skipped
        for n in range(2):
            producer.submit("flaky.job", {"n": n})
        for n in range(3):
            producer.submit("bad.job", {"n": n})
        producer.submit("nobody.home", {})  # no handler: HandlerMissing, counted as "other"
    assert submitted("ok.job") - ok_before == 11

    async with running(worker):
        stats = worker.stats
        await eventually(
            lambda: (stats.completed, stats.failed, stats.duplicates_skipped) == (12, 4, 1),
            what="every job but the gated ones final",
        )

        # The commit point of the gate key's partition stays at its first gated job (offset
        # 0), so on Apache Kafka the lag is exactly every record of that partition, the
        # finished ones behind the gate included. Tansu counts batches, so it reads low.
        expected = await gated_partition_records(live) if on_kafka else 3

        async def backlog_held() -> bool:
            s = await scrape(worker)
            depth = value(s, "conveyor_queue_depth", priority="normal")
            # The backlog counts only the three gated jobs: not the finished ones behind
            # them that the lag still counts (issue 14, defect 7).
            backlog = value(s, "conveyor_backlog", priority="normal")
            return backlog == 3 and (depth == expected if on_kafka else depth >= expected)

        await eventually(
            backlog_held, what=f"the gated jobs counted as lag ({expected}) and backlog (3)"
        )
        held = await scrape(worker)
        assert value(held, "conveyor_jobs_in_flight", priority="normal") == 1
        gate.set()

        async def drained() -> bool:
            s = await scrape(worker)
            return (
                value(s, "conveyor_queue_depth", priority="normal") == 0
                and value(s, "conveyor_backlog", priority="normal") == 0
                and value(s, "conveyor_dlq_pending") == 4
                and value(s, "conveyor_jobs_completed_total", type="gate.job", priority="normal")
                == 3
            )

        await eventually(drained, what="no lag, 4 DLQ rows, the gated jobs complete")
        s = await scrape(worker)

    def job(name: str, job_type: str, **extra: str) -> float:
        return value(s, name, type=job_type, priority="normal", **extra)

    assert job("conveyor_jobs_started_total", "ok.job") == 10
    assert job("conveyor_jobs_completed_total", "ok.job") == 10
    assert job("conveyor_jobs_duplicates_skipped_total", "ok.job") == 1
    assert job("conveyor_jobs_started_total", "flaky.job") == 4
    assert job("conveyor_jobs_retried_total", "flaky.job") == 2
    assert job("conveyor_jobs_completed_total", "flaky.job") == 2
    assert job("conveyor_jobs_started_total", "bad.job") == 3
    assert job("conveyor_jobs_failed_total", "bad.job", reason="Permanent") == 3
    assert job("conveyor_jobs_completed_total", "bad.job") == 0
    assert job("conveyor_jobs_started_total", "other") == 1
    assert job("conveyor_jobs_failed_total", "other", reason="HandlerMissing") == 1
    assert job("conveyor_jobs_started_total", "gate.job") == 3
    assert value(s, "conveyor_jobs_dead_lettered_total", priority="normal") == 4
    assert value(s, "conveyor_jobs_in_flight", priority="normal") == 0
    partitions = Topology.from_settings(live).spec(Topology.from_settings(live).job_topic("normal"))
    assert value(s, "conveyor_assigned_partitions", priority="normal") == partitions.partitions
    # Every attempt whose handler ran has a duration; only first attempts have a wait.
    durations = {"ok.job": 10, "flaky.job": 4, "bad.job": 3, "gate.job": 3, "other": 0}
    waits = {"ok.job": 10, "flaky.job": 2, "bad.job": 3, "gate.job": 3, "other": 1}
    for job_type, count in durations.items():
        assert job("conveyor_job_duration_seconds_count", job_type) == count, job_type
        assert job("conveyor_job_duration_seconds_bucket", job_type, le="+Inf") == count
    for job_type, count in waits.items():
        assert job("conveyor_job_wait_seconds_count", job_type) == count, job_type
    # The gated jobs waited for the gate: their duration sum shows it, the others' do not.
    assert job("conveyor_job_duration_seconds_sum", "gate.job") > job(
        "conveyor_job_duration_seconds_sum", "ok.job"
    )
    # Bounded labels: no job ids or keys anywhere.
    labels = {v for (_name, pairs) in s for _k, v in pairs}
    assert not any(len(v) == 36 and v.count("-") == 4 for v in labels)
    assert "gate" not in labels


@pytest.fixture
async def proxied(live: Settings) -> AsyncIterator[tuple[Settings, TcpProxy]]:
    """The settings with Postgres reached through a proxy the test can stop."""
    url = urllib.parse.urlsplit(live.database_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    netloc = url.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    netloc_new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    try:
        yield live.replace(database_url=url._replace(netloc=netloc_new).geturl()), proxy
    finally:
        await proxy.stop()


async def probe(worker: Worker, path: str) -> tuple[int, dict[str, str]]:
    response = await get(f"http://127.0.0.1:{worker.http_port}{path}")
    body = response.json()
    return response.status_code, body["checks"]


class _HeldRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Blocks a member's revoke until released, which holds every join of its group."""

    def __init__(self) -> None:
        self.assigned = asyncio.Event()
        self.release = asyncio.Event()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.assigned.is_set():
            await self.release.wait()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.assigned.set()


@contextlib.asynccontextmanager
async def join_held(settings: Settings) -> AsyncIterator[_HeldRevoke]:
    """A member of the ``normal`` workers' group that will not let a newcomer's join finish
    until ``release`` is set: the group cannot rebalance while its revoke runs."""
    topology = Topology.from_settings(settings)
    held = _HeldRevoke()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=topology.consumer_group("normal"),
        enable_auto_commit=False,
        rebalance_timeout_ms=60_000,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=500,
    )
    consumer.subscribe([topology.job_topic("normal")], listener=held)
    await consumer.start()
    polling = asyncio.create_task(consumer.getmany(timeout_ms=60_000))
    try:
        await asyncio.wait_for(held.assigned.wait(), 30)
        yield held
    finally:
        held.release.set()
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        await consumer.stop()


async def test_readyz_waits_for_the_group_join_and_follows_the_database(
    proxied: tuple[Settings, TcpProxy],
) -> None:
    settings, proxy = proxied
    worker = Worker(settings, priorities=["normal"], concurrency=2, options=OPTIONS)
    async with join_held(settings) as held, running(worker):
        await eventually(lambda: worker.http_port is not None, what="the endpoint to listen")
        status, checks = await probe(worker, "/readyz")
        # Served while the consumer's join is held, and honest about it.
        assert status == 503
        assert checks["consumer_groups"] != "ok"
        assert checks["database"] == "ok"
        assert (await probe(worker, "/healthz"))[0] == 200
        held.release.set()

        async def ready() -> bool:
            return (await probe(worker, "/readyz"))[0] == 200

        await eventually(ready, what="ready after the join")

        await proxy.stop()
        status, checks = await probe(worker, "/readyz")
        assert status == 503
        assert checks["database"] != "ok"
        assert checks["consumer_groups"] == "ok"
        assert (await probe(worker, "/healthz"))[0] == 200  # alive: restarting would not help

        await proxy.start()
        await eventually(ready, what="ready again once the database is back")


async def test_healthz_fails_while_the_event_loop_is_blocked(
    live: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probes, "LOOP_TIMEOUT", 0.5)
    worker = Worker(live, priorities=["normal"], concurrency=2, options=OPTIONS)
    blocking = asyncio.Event()

    @worker.handler("block.loop")
    async def block(ctx: JobContext, payload: Any) -> None:
        blocking.set()
        time.sleep(2.0)  # blocks the worker's event loop, on purpose  # noqa: ASYNC251

    async with running(worker):
        await eventually(lambda: worker.http_port is not None, what="the endpoint to listen")
        assert (await probe(worker, "/healthz"))[0] == 200
        url = f"http://127.0.0.1:{worker.http_port}/healthz"

        def probe_when_blocked() -> httpx.Response:
            deadline = time.monotonic() + 60
            while not blocking.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            return httpx.get(url, timeout=30)

        probing = asyncio.create_task(asyncio.to_thread(probe_when_blocked))
        with Producer(live) as producer:
            producer.submit("block.loop", {})
        response = await probing
        assert response.status_code == 503
        assert response.json()["checks"]["event_loop"].startswith("no answer")
        assert (await probe(worker, "/healthz"))[0] == 200


@pytest.mark.parametrize(
    ("helper", "name"), [(RetryRelay, "retry relay"), (Ledger, "ledger")], ids=["relay", "ledger"]
)
async def test_healthz_fails_when_a_helper_beside_the_jobs_dies(
    live: Settings, monkeypatch: pytest.MonkeyPatch, helper: type[RetryRelay | Ledger], name: str
) -> None:
    """A helper's task ends with an error: liveness says which helper stopped and why, so
    the pod is restarted instead of looking healthy while retries pile up unrelayed (the
    retry relay) or submitted jobs stop showing as queued (the ledger, on by default)."""

    helper_run = helper.run

    async def broken(self: RetryRelay | Ledger, stop: asyncio.Event) -> None:
        stopped = asyncio.Event()
        stopped.set()
        await helper_run(self, stopped)  # type: ignore[arg-type]  # returns at once, closed
        raise RuntimeError(f"{name} broke")

    monkeypatch.setattr(helper, "run", broken)
    worker = Worker(live, priorities=["normal"], concurrency=2, options=OPTIONS)
    async with running(worker):
        await eventually(lambda: worker.http_port is not None, what="the endpoint to listen")

        async def unhealthy() -> bool:
            status, checks = await probe(worker, "/healthz")
            return status == 503 and f"the {name} stopped" in (checks.get("helpers") or "")

        await eventually(unhealthy, what=f"/healthz to name the dead {name}")
        _status, checks = await probe(worker, "/healthz")
        assert f"{name} broke" in checks["helpers"]


async def test_a_fatal_publisher_error_fails_healthz_and_stops_fetching(live: Settings) -> None:
    """The retry/DLQ publisher's producer reports a fatal error (what librdkafka's
    ``error_cb`` does when idempotence breaks): every later retry or DLQ publish would
    fail, so liveness fails naming it, and the worker stops taking jobs rather than
    fail each one with health green."""
    worker = Worker(live, priorities=["normal"], concurrency=2, options=OPTIONS)
    ran: list[str] = []

    @worker.handler("ok.job")
    async def ok(ctx: JobContext, payload: Any) -> None:
        ran.append(ctx.job_id)

    async with running(worker):
        with Producer(live) as producer:
            first = producer.submit("ok.job", {})
        await eventually(lambda: ran == [first], what="the first job to run")
        assert (await probe(worker, "/healthz"))[0] == 200
        loop = worker._loop
        assert loop is not None
        watch = loop._publisher._core._watch
        assert watch is not None
        watch(KafkaError(KafkaError._FATAL, "Idempotent producer: sequence gap", fatal=True))

        async def unhealthy() -> bool:
            status, checks = await probe(worker, "/healthz")
            return status == 503 and "fatal error" in (checks.get("publisher") or "")

        await eventually(unhealthy, what="/healthz to name the broken publisher")
        consumer = loop._consumers["normal"]
        await eventually(
            lambda: bool(consumer.assignment()) and consumer.paused() == consumer.assignment(),
            what="fetching to stop",
        )
        with Producer(live) as producer:
            producer.submit("ok.job", {})
        # An observation window, not a wait for a result: fetching stays stopped.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(eventually(lambda: len(ran) > 1), timeout=3.0)
        assert ran == [first]
