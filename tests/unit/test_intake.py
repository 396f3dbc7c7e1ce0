"""A fetch is decoded in chunks with a loop turn between, and a partition revoked during
those turns is left to its next owner."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from conveyor.consumer.decoding import RegistryWaits
from conveyor.consumer.intake import INTAKE_CHUNK, Intake
from conveyor.consumer.job import JobMessage
from conveyor.consumer.offsets import OffsetTracker
from conveyor.consumer.outcome import WorkerStats
from conveyor.consumer.publisher import FailurePublisher
from conveyor.observability.metrics import WorkerMetrics
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology

TP = TopicPartition("jobs.normal", 0)
OTHER = TopicPartition("jobs.normal", 1)


class EnvelopeSerde:
    """Decodes a record's value, a job id, into the envelope of a no-op job."""

    def decode(
        self, name: str, topic: str, value: bytes, *, text_uuids: bool = False
    ) -> dict[str, Any]:
        return {
            "job_id": value.decode(),
            "type": "noop",
            "priority": "normal",
            "payload": b"{}",
            "content_type": "application/json",
            "submitted_at": dt.datetime.now(dt.UTC),
        }


class NoRegistry:
    """Every record's schema is known: nothing needs the registry."""

    def needs_registry(self, value: bytes | None) -> bool:
        return False


def records(tp: TopicPartition, count: int) -> list[ConsumerRecord[Any, Any]]:
    return [
        ConsumerRecord(
            tp.topic, tp.partition, offset, 0, 0, None, str(uuid.uuid4()).encode(), None, 0, 36, ()
        )
        for offset in range(count)
    ]


def intake(held: dict[TopicPartition, bool]) -> Intake:
    return Intake(
        serde=cast(Serde, EnvelopeSerde()),
        publisher=cast(FailurePublisher, None),
        offsets=OffsetTracker(),
        stats=WorkerStats(),
        metrics=WorkerMetrics(),
        topology=cast(Topology, None),
        tasks=set(),
        holds=lambda tp, generation: held[tp] and generation == 1,
        generation=lambda tp: 1,
    )


async def prepare(
    held: dict[TopicPartition, bool], batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
) -> dict[TopicPartition, tuple[int, list[tuple[ConsumerRecord[Any, Any], Any]]]]:
    return await intake(held).prepare_fetch(
        cast(AIOKafkaConsumer, None), batch, cast(RegistryWaits, NoRegistry())
    )


async def test_a_fetch_is_decoded_with_a_loop_turn_between_chunks() -> None:
    turns: list[int] = []
    decoded = [0]

    def tick() -> None:  # runs once per loop turn while the fetch is decoded
        turns.append(decoded[0])
        if len(turns) < 10:
            asyncio.get_running_loop().call_soon(tick)

    batch = {TP: records(TP, 3 * INTAKE_CHUNK), OTHER: records(OTHER, INTAKE_CHUNK)}
    asyncio.get_running_loop().call_soon(tick)
    prepared = await prepare({TP: True, OTHER: True}, batch)
    assert len(turns) == 4  # the 64th, 128th, 192nd and 256th record began a new chunk
    assert [generation for generation, _ in prepared.values()] == [1, 1]
    jobs = [item for _, items in prepared.values() for _, item in items]
    assert len(jobs) == 4 * INTAKE_CHUNK
    assert all(isinstance(job, JobMessage) for job in jobs)
    assert [record.offset for record, _ in prepared[TP][1]] == list(range(3 * INTAKE_CHUNK))


async def test_a_partition_revoked_between_chunks_keeps_only_what_came_before() -> None:
    held = {TP: True, OTHER: True}
    asyncio.get_running_loop().call_soon(held.__setitem__, TP, False)  # the first turn
    batch = {TP: records(TP, 2 * INTAKE_CHUNK), OTHER: records(OTHER, 10)}
    prepared = await prepare(held, batch)
    # The records before the first turn are kept with their generation: the caller
    # checks it again before buffering any of them.
    assert len(prepared[TP][1]) == INTAKE_CHUNK - 1
    assert len(prepared[OTHER][1]) == 10  # still held: decoded whole
