"""An in-memory stand-in for the Kafka topics of one deployment.

:class:`MemoryLog` keeps every record sent to a topic partition, in order, with its
offset; a reader keeps its own position per partition, as a consumer group would. Topics
have the partition counts the topology declares, and a key picks its partition as Kafka's
default partitioner does (murmur2), so what waits behind what in a partition (a retry not
yet due holds the records behind it) is what it would be on a broker.

:class:`MemoryDelivery` is what the real ``Producer``, ``AsyncProducer`` and the worker's
``FailurePublisher`` send through in the in-process test mode (their ``core``): every
message is acknowledged at once, by appending it to the log.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from aiokafka.partitioner import DefaultPartitioner

from conveyor.errors import DeliveryError
from conveyor.producer.delivery import DeliveryCore, DeliveryStats
from conveyor.producer.jobs import Outgoing
from conveyor.testing.clock import FakeClock


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """One message in a topic.

    Args:
        topic: The topic.
        partition: The partition.
        offset: Its position in the partition, from 0.
        key: The message key.
        value: The encoded value (Confluent wire format).
        headers: The headers, by name.
        skipped: The seconds the fake clock had skipped when the record was appended.
            Producers date ``not_before`` by the real clock; adding this places it on
            the fake one.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Mapping[str, bytes]
    skipped: float = 0.0


class MemoryLog:
    """Every topic's records, thread-safe (``AsyncProducer`` appends from a thread).

    Args:
        clock: The fake clock whose skips each record notes; none by default.
        partitions: The partition count of a topic; 1 for every topic by default.
    """

    def __init__(
        self,
        clock: FakeClock | None = None,
        partitions: Callable[[str], int] | None = None,
    ) -> None:
        self._clock = clock
        self._partitions = partitions or (lambda _topic: 1)
        self._topics: defaultdict[tuple[str, int], list[Record]] = defaultdict(list)
        self._lock = threading.Lock()
        self._partitioner = DefaultPartitioner()

    def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has."""
        return max(1, self._partitions(topic))

    def partition_for(self, topic: str, key: bytes | None) -> int:
        """The partition Kafka's default partitioner gives ``key`` (0 without a key)."""
        count = self.partitions(topic)
        if key is None or count == 1:
            return 0
        every = list(range(count))
        chosen: int = self._partitioner(key, every, every)
        return chosen

    def append(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, bytes] = (),
        *,
        partition: int | None = None,
    ) -> Record:
        """Appends one message to ``topic`` and returns it with its partition and offset.

        Args:
            topic: The topic.
            key: The message key; it picks the partition unless ``partition`` is given.
            value: The encoded value.
            headers: Headers as pairs or a mapping; ``None`` values are dropped.
            partition: The partition, instead of the key's.
        """
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        kept = {
            name: value.encode() if isinstance(value, str) else value
            for name, value in pairs
            if value is not None
        }
        chosen = self.partition_for(topic, key) if partition is None else partition
        with self._lock:
            records = self._topics[topic, chosen]
            skipped = 0.0 if self._clock is None else self._clock.skipped
            record = Record(topic, chosen, len(records), key, value, kept, skipped)
            records.append(record)
        return record

    def read(self, topic: str, partition: int, start: int) -> list[Record]:
        """The records of one partition of ``topic`` from offset ``start`` on."""
        with self._lock:
            return self._topics[topic, partition][start:]

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic``, partition by partition, each oldest first."""
        return [r for p in range(self.partitions(topic)) for r in self.read(topic, p, 0)]


class MemoryDelivery(DeliveryCore):
    """A ``DeliveryCore`` that appends to a :class:`MemoryLog` and acknowledges at once.

    It opens no Kafka connection, so the base class's constructor is not called.

    Args:
        log: Where messages go.
    """

    def __init__(self, log: MemoryLog) -> None:
        self.delivery_timeout = 0.0
        self.stats = DeliveryStats()
        self._log = log
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def send(self, messages: Sequence[Outgoing]) -> list[concurrent.futures.Future[None]]:
        """Appends the messages; each future is already resolved.

        Raises:
            DeliveryError: The producer is closed.
        """
        if self._closed.is_set():
            raise DeliveryError("the producer is closed; create a new one to submit more jobs")
        futures = []
        for message in messages:
            self._log.append(message.topic, message.key, message.value, message.headers)
            future: concurrent.futures.Future[None] = concurrent.futures.Future()
            future.set_result(None)
            futures.append(future)
        with self._lock:
            self.stats.submitted += len(messages)
            self.stats.delivered += len(messages)
        return futures

    def wait(self, futures: Sequence[concurrent.futures.Future[None]]) -> None:
        """Returns at once: every message was acknowledged when it was sent."""

    def flush(self, timeout: float | None = None) -> None:
        """Returns at once: nothing is ever queued."""

    def close(self, timeout: float | None = None) -> None:
        """Refuses further sends. Idempotent."""
        self._closed.set()
