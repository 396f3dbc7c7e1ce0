"""Schema-registry work stays off the worker's event loop (issue 14, defect 8).

Without a registry: a serde whose encode blocks (as an HTTP request to a slow registry
does) must not stall the loop while the failure publisher waits on it, and the partition
waits of ``RegistryWaits`` tell a registry outage and a lagging follower's 404 apart from
bytes that can never decode.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import TopicPartition

from conveyor.consumer.decoding import WAIT_INITIAL, RegistryWaits
from conveyor.consumer.publisher import FailurePublisher
from conveyor.errors import DeserializationError, RegistryUnavailableError, UnknownSchemaError
from conveyor.schemas.contracts import Contract
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.testing.memlog import MemoryDelivery, MemoryLog
from conveyor.topology.model import Topology
from tests.worker_helpers import eventually

BLOCK_LIMIT = 20.0
"""How long the blocking encode waits for the test before giving up (a deadlock guard)."""


class _BlockingSerde(Serde):
    """Encodes only once the test lets it, as if the registry were slow to answer."""

    def __init__(self) -> None:
        super().__init__(Settings())
        self.entered = threading.Event()
        self.release = threading.Event()
        self.gave_up = False

    def encode(self, contract: Contract, topic: str, record: Mapping[str, Any]) -> bytes:
        self.entered.set()
        if not self.release.wait(BLOCK_LIMIT):
            self.gave_up = True
        return b"encoded"


async def test_the_failure_publisher_encodes_off_the_event_loop() -> None:
    serde = _BlockingSerde()
    log = MemoryLog()
    publisher = FailurePublisher(Settings(), serde=serde, core=MemoryDelivery(log))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    publish = asyncio.create_task(
        publisher.dead_raw(
            topic="acme.jobs.normal",
            partition=0,
            offset=7,
            key=None,
            value=b"\xff",
            headers={},
            reason="Deserialization",
            error={"attempt": 1},
        )
    )
    try:
        await asyncio.to_thread(serde.entered.wait, BLOCK_LIMIT)
        seen = ticks
        await eventually(  # the loop runs during the encode, or the encode gave up
            lambda: ticks >= seen + 3 or serde.gave_up,
            timeout=2 * BLOCK_LIMIT,
            what="the event loop to run during the encode",
        )
        serde.release.set()
        await publish
    finally:
        serde.release.set()
        ticker.cancel()
        serde.close()
    assert not serde.gave_up, "the encode blocked the event loop until it gave up"
    dlq_topic = Topology.from_settings(Settings()).dlq_topic
    assert [r.value for r in log.records(dlq_topic)] == [b"encoded"]


class _ScriptedSerde(Serde):
    """Answers each decode with the next scripted outcome; knows no schema id."""

    def __init__(self, outcomes: Sequence[Exception | dict[str, Any]]) -> None:
        super().__init__(Settings())
        self.outcomes = list(outcomes)

    def decode(
        self, contract: Contract, topic: str, data: bytes, *, text_uuids: bool = False
    ) -> dict[str, Any]:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class _Consumer:
    """The part of an aiokafka consumer ``RegistryWaits`` drives."""

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.paused: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def subscription(self) -> set[str]:
        return {self.tp.topic}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)


FRAMED = b"\x00" + struct.pack(">I", 41) + b"\x02body"


async def test_an_outage_holds_the_partition_with_backoff_and_never_gives_up() -> None:
    now = [100.0]
    down = RegistryUnavailableError("schema registry did not answer")
    serde = _ScriptedSerde([down] * 5 + [{"job_id": "j"}])
    waits = RegistryWaits(serde, unknown_schema_wait=1.0, clock=lambda: now[0])
    tp = TopicPartition("acme.jobs.normal", 0)
    consumer = _Consumer(tp)
    assert waits.needs_registry(FRAMED)
    assert not waits.needs_registry(b"\x07not framed")  # fails locally: no request
    for _ in range(5):
        assert await waits.decode(tp, 12, FRAMED) is None
        waits.hold(consumer, tp)
        assert consumer.paused == {tp}
        assert consumer.positions[tp] == 12
        assert "did not answer" in (waits.problem or "")
        waits.resume_due(consumer, set())
        assert consumer.paused == {tp}, "resumed before its backoff was over"
        now[0] += 60.0  # far past unknown_schema_wait: an outage is waited out regardless
        waits.resume_due(consumer, set())
        assert consumer.paused == set()
    assert await waits.decode(tp, 12, FRAMED) == {"job_id": "j"}
    assert waits.problem is None


async def test_an_unknown_id_waits_then_is_permanent_and_bad_bytes_are_at_once() -> None:
    now = [0.0]
    unknown = UnknownSchemaError("schema id 41 is unknown to the registry", 41)
    corrupt = DeserializationError("Avro body does not decode")
    serde = _ScriptedSerde([unknown, unknown, unknown, corrupt])
    waits = RegistryWaits(serde, unknown_schema_wait=30.0, clock=lambda: now[0])
    tp = TopicPartition("acme.jobs.normal", 0)
    assert await waits.decode(tp, 3, FRAMED) is None  # a follower may lag: wait
    now[0] += WAIT_INITIAL + 10.0
    assert await waits.decode(tp, 3, FRAMED) is None
    now[0] += 30.0  # past unknown_schema_wait since the first try
    assert await waits.decode(tp, 3, FRAMED) is unknown  # permanent now: dead-letter it
    assert waits.problem is None
    assert await waits.decode(tp, 4, FRAMED) is corrupt  # never waits
    assert waits.problem is None


async def test_an_unknown_id_is_tried_again_when_its_wait_is_over_not_a_backoff_later() -> None:
    """Tries at 0, 0.5 and 1.5 s; the next backoff (2 s) would end at 3.5 s, past the
    3 s wait: the partition is resumed at 3 s for its last try instead."""
    now = [0.0]
    unknown = UnknownSchemaError("schema id 41 is unknown to the registry", 41)
    serde = _ScriptedSerde([unknown] * 4)
    waits = RegistryWaits(serde, unknown_schema_wait=3.0, clock=lambda: now[0])
    tp = TopicPartition("acme.jobs.normal", 0)
    consumer = _Consumer(tp)
    for at in (0.0, 0.5, 1.5):
        now[0] = at
        assert await waits.decode(tp, 3, FRAMED) is None
        waits.hold(consumer, tp)
    now[0] = 2.9
    waits.resume_due(consumer, set())
    assert consumer.paused == {tp}
    now[0] = 3.0
    waits.resume_due(consumer, set())
    assert consumer.paused == set()
    assert await waits.decode(tp, 3, FRAMED) is unknown
