"""Helpers of the retry relay's integration tests: retry messages written, job topics read,
a relay run for a block."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer as KafkaProducer

from conveyor.consumer.relay import RelayOptions, RetryRelay
from conveyor.producer.delivery import producer_config
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology import admin
from conveyor.topology.model import Topology
from tests.worker_helpers import eventually

#: A relay quick to join, rejoin and commit.
OPTIONS = RelayOptions(session_timeout_ms=6000, heartbeat_interval_ms=1000, commit_interval=0.2)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def in_seconds(delay: float) -> dt.datetime:
    """An instant ``delay`` from now, cut to the millisecond as Avro timestamp-millis keeps it."""
    at = now() + dt.timedelta(seconds=delay)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def envelope(priority: str, not_before: dt.datetime | None) -> dict[str, Any]:
    return {
        "job_id": str(uuid.uuid4()),
        "type": "email.send",
        "key": "acct-1",
        "priority": priority,
        "payload": b'{"to": "a@example.com"}',
        "content_type": "application/json",
        "tenant_id": None,
        "batch_id": None,
        "dedupe_key": None,
        "attempt": 2,
        "max_attempts": None,
        "submitted_at": now(),
        "not_before": not_before,
        "duration": "short",
        "errors": [],
    }


@dataclasses.dataclass
class Written:
    """A message written to a retry topic, as the relay must reproduce it."""

    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    not_before: dt.datetime | None


def write(
    live: Settings,
    messages: list[tuple[str, int, bytes, bytes | None, list[tuple[str, bytes]]]],
) -> None:
    """Writes (topic, partition, value, key, headers) in order and waits for the acks."""
    producer = KafkaProducer(producer_config(live, delivery_timeout=10.0, linger_ms=0))
    for topic, partition, value, key, headers in messages:
        producer.produce(
            topic,
            value=value,
            key=key,
            headers=list[tuple[str, str | bytes | None]](headers),
            partition=partition,
        )
    assert producer.flush(15.0) == 0


def retry_message(
    serde: Serde, topic: str, partition: int, priority: str, delay: float | None
) -> tuple[Written, tuple[str, int, bytes, bytes | None, list[tuple[str, bytes]]]]:
    not_before = None if delay is None else in_seconds(delay)
    value = serde.encode(JOB_ENVELOPE, topic, envelope(priority, not_before))
    headers = [("traceparent", b"00-" + uuid.uuid4().hex.encode() + b"-01")]
    key = uuid.uuid4().hex.encode()
    return Written(value, key, headers, not_before), (topic, partition, value, key, headers)


class JobTopicReader:
    """Reads every job topic from the start and notes when each value was read."""

    def __init__(self, live: Settings) -> None:
        topology = Topology.from_settings(live)
        self._partitions = [
            TopicPartition(spec.name, p)
            for spec in topology.job_topics
            for p in range(spec.partitions)
        ]
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=live.kafka_bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        self.read: list[tuple[dt.datetime, Any]] = []

    async def run(self) -> None:
        await self._consumer.start()
        try:
            self._consumer.assign(self._partitions)
            while True:
                batch = await self._consumer.getmany(timeout_ms=100)
                read_at = now()
                for records in batch.values():
                    self.read.extend((read_at, record) for record in records)
        finally:
            await self._consumer.stop()

    def find(self, written: Written) -> list[tuple[dt.datetime, Any]]:
        return [(at, r) for at, r in self.read if r.value == written.value]

    def has(self, written: Written) -> bool:
        return bool(self.find(written))


@contextlib.asynccontextmanager
async def reading(live: Settings) -> AsyncIterator[JobTopicReader]:
    reader = JobTopicReader(live)
    task = asyncio.create_task(reader.run())
    try:
        yield reader
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def retry_partitions(live: Settings) -> set[TopicPartition]:
    return {
        TopicPartition(rung.name, p)
        for rung in Topology.from_settings(live).retry_topics
        for p in range(live.partition_unit * 2)
    }


@contextlib.asynccontextmanager
async def relaying(live: Settings, serde: Serde) -> AsyncIterator[RetryRelay]:
    """Runs a relay until it owns every retry partition, then for the block; then stops it."""
    relay = RetryRelay(live, serde=serde, options=OPTIONS)
    stop = asyncio.Event()
    await relay.start()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: relay.owned == retry_partitions(live), what="relay assignment")
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def relay_settings(settings: Settings, schema_registry_url: str) -> Settings:
    """One partition unit (2 partitions per retry topic), registry set, topology applied."""
    live = settings.replace(partition_unit=1, schema_registry_url=schema_registry_url)
    await asyncio.to_thread(admin.apply, live)
    return live
