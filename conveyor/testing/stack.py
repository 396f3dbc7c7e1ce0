"""The real-stack test mode: isolated settings, a worker in the background, and waits.

- :func:`isolated` gives a test its own topic prefix and Postgres schema on real
  services, with the migrations and the topology applied, and drops both afterwards;
- :func:`running` runs a ``Worker`` as a task of the test's event loop until the block
  ends, then stops it the way SIGTERM does;
- :func:`wait_for` follows one job (Postgres notifications, as ``JobStore.progress``)
  until it reaches a state;
- :func:`drain` waits until a worker has nothing left: every job topic, retry topic and
  the DLQ consumed and committed, nothing running, no job queued or processing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka.admin import AdminClient

from conveyor import db, migrations
from conveyor.consumer.kafka import aiokafka_security, consumer_lag
from conveyor.consumer.worker import Worker
from conveyor.errors import ConveyorError
from conveyor.jobstatus import JobStatus
from conveyor.jobstore import JobStore
from conveyor.settings import Settings
from conveyor.topology import admin
from conveyor.topology.model import Topology

DEFAULT_WAIT = 30.0
START_TIMEOUT = 60.0
DRAIN_POLL = 0.1
_PENDING = "SELECT count(*) FROM jobs WHERE state IN ('queued', 'processing')"
#: The workers :func:`running` runs now, for :func:`wait_for` without ``settings``.
_RUNNING: list[Worker] = []


class WaitTimeoutError(ConveyorError, TimeoutError):
    """A job or a worker did not get where a test waited for it in time."""


def unique_name(prefix: str) -> str:
    """A short random name, usable as a topic prefix or a Postgres identifier."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def drop_schema(settings: Settings) -> None:
    """Drops ``settings.database_schema`` with everything in it."""
    conn = await db.connect(settings)
    try:
        await conn.execute(
            f"DROP SCHEMA IF EXISTS {db.quote_ident(settings.database_schema)} CASCADE"
        )
    finally:
        await conn.close()


def delete_topics(settings: Settings) -> None:
    """Deletes the declared topics of ``settings.topic_prefix`` (best effort)."""
    client = AdminClient(dict(settings.kafka_config()))
    names = [spec.name for spec in Topology.from_settings(settings).topics]
    for future in client.delete_topics(names, operation_timeout=10).values():
        with contextlib.suppress(Exception):  # a topic never created, or already gone
            future.result(timeout=15)


@contextlib.contextmanager
def isolated(base: Settings) -> Iterator[Settings]:
    """Settings of one test: a random topic prefix and schema, migrated and applied.

    Call it outside a running event loop (a sync fixture): the migrations run in their
    own. The schema and topics are dropped when the block ends.
    """
    settings = base.replace(
        topic_prefix=unique_name("t"), database_schema=unique_name("cv_"), metrics_port=0
    )
    asyncio.run(migrations.migrate(settings))
    try:
        admin.apply(settings)
        yield settings
    finally:
        try:
            delete_topics(settings)
        finally:
            asyncio.run(drop_schema(settings))


@contextlib.asynccontextmanager
async def running(worker: Worker, *, start_timeout: float = START_TIMEOUT) -> AsyncIterator[Worker]:
    """Runs ``worker`` in the background until the block ends, then stops it cleanly.

    The block starts once every consumer of the worker has joined its group.

    Raises:
        WaitTimeoutError: The worker did not join within ``start_timeout`` seconds.
    """
    task = asyncio.create_task(worker.run(), name=f"conveyor-worker-{worker.worker_id}")
    _RUNNING.append(worker)
    try:
        deadline = time.monotonic() + start_timeout
        while not worker.joined:
            if task.done():
                await task  # raises what stopped it
                raise ConveyorError("the worker stopped before it joined its groups")
            if time.monotonic() > deadline:
                raise WaitTimeoutError(f"the worker did not join within {start_timeout:.0f} s")
            await asyncio.wait({task}, timeout=0.02)
        yield worker
    finally:
        _RUNNING.remove(worker)
        worker.stop()
        await task


async def wait_for(
    job_id: str, state: str, *, timeout: float = DEFAULT_WAIT, settings: Settings | None = None
) -> JobStatus:
    """Waits until the job is in ``state``, following its Postgres notifications.

    Args:
        job_id: The job.
        state: ``queued``, ``processing``, ``complete``, ``failed`` or ``cancelled``.
        timeout: Seconds to wait.
        settings: Where the job's status is; by default the settings of the workers
            running under :func:`running` (the ``conveyor_worker`` fixture).

    Returns:
        The job's status in that state.

    Raises:
        WaitTimeoutError: The job did not get there in time, or ended in another state
            (the message says where it is).
    """
    last: JobStatus | None = None
    async with JobStore(settings or _running_settings(), poll_interval=0.5) as store:
        try:
            async with asyncio.timeout(timeout):
                statuses = store.progress(job_id)
                try:
                    async for status in statuses:
                        last = status
                        if status.state == state:
                            return status
                finally:
                    await statuses.aclose()  # type: ignore[attr-defined]
        except TimeoutError:
            pass
    where = "unknown" if last is None else f"{last.state} after {last.attempts} attempt(s)"
    if last is not None and last.is_final:
        raise WaitTimeoutError(f"job {job_id} ended {where}, not {state}: {last.last_error}")
    raise WaitTimeoutError(f"job {job_id} is not {state} after {timeout:.0f} s; it is {where}")


def _running_settings() -> Settings:
    found = {worker.settings for worker in _RUNNING}
    if len(found) != 1:
        raise ConveyorError(
            f"{len(_RUNNING)} worker(s) with {len(found)} different settings are running; "
            "pass settings= to say where the job is"
        )
    return found.pop()


async def drain(worker: Worker, *, timeout: float = DEFAULT_WAIT) -> None:
    """Waits until ``worker`` has nothing left to do, retries and dead letters included.

    That is: its job topics, the retry topics (when it runs the relay) and the DLQ topic
    (when it runs the sink) are consumed and committed by their groups, no job runs, and
    no job of its schema is queued or processing. Backoff is waited out in real time:
    give the handlers short ``RetryPolicy`` delays in this mode.

    Raises:
        WaitTimeoutError: Work remains after ``timeout`` seconds (the message says what).
    """
    settings = worker.settings
    topology = Topology.from_settings(settings)
    groups: dict[str, list[TopicPartition]] = {
        topology.consumer_group(p): _partitions(topology, topology.job_topic(p))
        for p in worker.priorities
    }
    if worker.options.run_relay:
        groups[f"{settings.topic_prefix}.relay"] = [
            tp for rung in topology.retry_topics for tp in _partitions(topology, rung.name)
        ]
    if worker.options.run_dlq_sink:
        groups[f"{settings.topic_prefix}.dlq-sink"] = _partitions(topology, topology.dlq_topic)
    consumers = {
        group: AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            **aiokafka_security(settings),
        )
        for group in groups
    }
    conn = await db.connect(settings)
    try:
        await asyncio.gather(*(c.start() for c in consumers.values()))
        deadline = time.monotonic() + timeout
        while True:
            left = await _left(worker, conn, groups, consumers)
            if not left:
                return
            if time.monotonic() > deadline:
                raise WaitTimeoutError(f"the worker still has work after {timeout:.0f} s: {left}")
            await asyncio.sleep(DRAIN_POLL)
    finally:
        await asyncio.gather(*(c.stop() for c in consumers.values()), return_exceptions=True)
        await conn.close()


def _partitions(topology: Topology, topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(topology.spec(topic).partitions)]


async def _left(
    worker: Worker,
    conn: asyncpg.Connection[Any],
    groups: dict[str, list[TopicPartition]],
    consumers: dict[str, AIOKafkaConsumer],
) -> str:
    """What the worker still has to do, in words; empty when nothing."""
    if worker.in_flight:
        return f"{worker.in_flight} job(s) running"
    for group, partitions in groups.items():
        lag = await consumer_lag(consumers[group], partitions)
        if lag:
            return f"{lag} message(s) not yet committed by {group}"
    pending = await conn.fetchval(_PENDING)
    if pending:
        return f"{pending} job(s) queued or processing"
    return ""


__all__ = [
    "WaitTimeoutError",
    "delete_topics",
    "drain",
    "drop_schema",
    "isolated",
    "running",
    "unique_name",
    "wait_for",
]
