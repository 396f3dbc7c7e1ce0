"""What the retry relay holds: fetched records, decoded once, per owned partition."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import logging
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from conveyor.errors import DeserializationError
from conveyor.observability import tracing
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.topology.model import PRIORITIES, Topology

log = logging.getLogger("conveyor.relay")

#: Where a retry message whose priority is unknown is relayed.
FALLBACK_PRIORITY = "normal"


@dataclasses.dataclass(eq=False)
class Item:
    """One fetched record and, once decoded, where and when it goes."""

    record: ConsumerRecord[bytes, bytes]
    decoded: bool = False
    skip: bool = False
    topic: str = ""
    not_before: dt.datetime | None = None
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)  # the job's, for spans
    #: Where it is sent next: its job topic when due, a retry rung for a hop.
    destination: str = ""
    #: When the relay first saw it (for a record without a timestamp).
    seen_at: float = dataclasses.field(default_factory=time.time)

    def decode(self, serde: Serde, topology: Topology) -> bool:
        """Reads where and when the record goes; False (and marked skipped) if undecodable."""
        record = self.record
        try:
            envelope = serde.decode(JOB_ENVELOPE, record.topic, record.value or b"")
        except DeserializationError as exc:
            log.error(
                "skipping undecodable retry message %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            self.skip = self.decoded = True
            return False
        priority = envelope.get("priority")
        if priority not in PRIORITIES:
            log.warning(
                "retry message %s[%d]@%d has unknown priority %r; relaying it as %s",
                record.topic,
                record.partition,
                record.offset,
                priority,
                FALLBACK_PRIORITY,
            )
            priority = FALLBACK_PRIORITY
        self.topic = topology.job_topic(str(priority))
        self.attributes = tracing.job_attributes(
            job_id=str(envelope.get("job_id")),
            job_type=envelope.get("type"),
            priority=str(priority),
            attempt=envelope.get("attempt"),
        )
        not_before = envelope.get("not_before")
        self.not_before = not_before if isinstance(not_before, dt.datetime) else None
        self.decoded = True
        return True


@dataclasses.dataclass(eq=False)
class HeldPartition:
    """What the relay holds for one owned retry partition."""

    tp: TopicPartition
    pending: collections.deque[Item] = dataclasses.field(default_factory=collections.deque)
    done: int | None = None  # the offset after the last republished or skipped record
    committed: int | None = None
    paused: bool = False
    released: bool = False
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
