"""An in-memory stand-in for the Kafka topics of one deployment.

:class:`MemoryLog` keeps every record sent to a topic, in order, with its offset; a
reader keeps its own position per topic, as a consumer group would. One partition per
topic is enough here: per-key order is what the worker guarantees, and the entity
mailboxes give it within one partition as within many.

:class:`MemoryDelivery` is what the real ``Producer``, ``AsyncProducer`` and the worker's
``FailurePublisher`` send through in the in-process test mode (their ``core``): every
message is acknowledged at once, by appending it to the log.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence

from conveyor.errors import DeliveryError
from conveyor.producer.delivery import DeliveryCore, DeliveryStats
from conveyor.producer.jobs import Outgoing
from conveyor.testing.clock import FakeClock


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """One message in a topic.

    Args:
        topic: The topic.
        offset: Its position in the topic, from 0.
        key: The message key.
        value: The encoded value (Confluent wire format).
        headers: The headers, by name.
        skipped: The seconds the fake clock had skipped when the record was appended.
            Producers date ``not_before`` by the real clock; adding this places it on
            the fake one.
    """

    topic: str
    offset: int
    key: bytes | None
    value: bytes
    headers: Mapping[str, bytes]
    skipped: float = 0.0


class MemoryLog:
    """Every topic's records, thread-safe (``AsyncProducer`` appends from a thread).

    Args:
        clock: The fake clock whose skips each record notes; none by default.
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self._clock = clock
        self._topics: defaultdict[str, list[Record]] = defaultdict(list)
        self._lock = threading.Lock()

    def append(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, bytes] = (),
    ) -> Record:
        """Appends one message to ``topic`` and returns it with its offset."""
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        kept = {
            name: value.encode() if isinstance(value, str) else value
            for name, value in pairs
            if value is not None
        }
        with self._lock:
            records = self._topics[topic]
            skipped = 0.0 if self._clock is None else self._clock.skipped
            record = Record(topic, len(records), key, value, kept, skipped)
            records.append(record)
        return record

    def read(self, topic: str, start: int) -> list[Record]:
        """The records of ``topic`` from offset ``start`` on."""
        with self._lock:
            return self._topics[topic][start:]

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic``, oldest first."""
        return self.read(topic, 0)


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
