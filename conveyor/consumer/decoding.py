"""Decoding fetched jobs without blocking on the schema registry, and waiting it out.

Most job envelopes carry a writer schema id this worker has read before, so decoding is
local and stays on the event loop. An id not seen yet needs one registry request (up to
``DEFAULT_REGISTRY_TIMEOUT``): that decode runs in a thread, so the event loop (the other
priorities' fetches, the dispatcher, heartbeats, probes) never waits on HTTP.

What the registry answers decides what happens to the message:

- decoded, or bytes that cannot be a job (no header, wrong magic byte, an Avro body that
  does not fit its writer schema): permanent, and the caller dead-letters the latter;
- the registry did not answer (``RegistryUnavailableError``): transient, not the
  message's fault. The partition *waits*: it is rewound to the message and paused, and
  resumed after a backoff (``WAIT_INITIAL`` doubling to ``WAIT_MAX``) to try again.
  Nothing is dead-lettered, the fetch loop stays alive, and the other partitions go on;
- the registry does not know the id (HTTP 404, ``UnknownSchemaError``): a follower that
  lags its leader says so for an id registered a moment ago, so the partition waits the
  same way, but only for ``unknown_schema_wait`` seconds from the first try on that
  message (its last try comes when they are over, not a whole backoff later); then the
  id is taken as truly unknown and the message is dead-lettered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from conveyor.errors import DeserializationError, RegistryUnavailableError, UnknownSchemaError
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde

log = logging.getLogger("conveyor.worker")

#: Backoff between tries of a partition waiting for the registry, doubling to the maximum.
WAIT_INITIAL = 0.5
WAIT_MAX = 30.0


@dataclasses.dataclass
class _Waiting:
    offset: int  # the message the partition waits on
    since: float  # monotonic time of its first try
    retry_at: float
    delay: float
    reason: str
    resumed: bool = False


class RegistryWaits:
    """Decodes envelopes whose schema id needs the registry, and holds partitions that wait.

    Args:
        serde: The worker's serde.
        unknown_schema_wait: Seconds a message whose schema id the registry does not
            know waits before it is dead-lettered (a lagging follower catches up first).
        clock: Monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        serde: Serde,
        *,
        unknown_schema_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._serde = serde
        self._unknown_wait = unknown_schema_wait
        self._clock = clock
        self._waiting: dict[TopicPartition, _Waiting] = {}

    def needs_registry(self, value: bytes | None) -> bool:
        """Whether decoding ``value`` may call the registry (see ``Serde.needs_registry``)."""
        return self._serde.needs_registry(value)

    @property
    def problem(self) -> str | None:
        """Which partitions wait for the registry and why, or None (a readiness check)."""
        if not self._waiting:
            return None
        held = sorted(f"{tp.topic}[{tp.partition}]" for tp in self._waiting)
        first = next(iter(self._waiting.values()))
        return f"{len(held)} partition(s) wait for the schema registry ({first.reason})"

    async def decode(
        self, tp: TopicPartition, offset: int, value: bytes
    ) -> dict[str, Any] | DeserializationError | None:
        """Decodes one envelope in a thread.

        Returns:
            The envelope; a ``DeserializationError`` when the bytes are permanently
            undecodable (dead-letter them); None when the partition must wait: call
            :meth:`hold` and read no further record of it.
        """
        try:
            envelope = await asyncio.to_thread(self._serde.decode, JOB_ENVELOPE, tp.topic, value)
        except UnknownSchemaError as exc:
            if self._waited_out(tp, offset):
                self._waiting.pop(tp, None)
                return exc
            self._note(tp, offset, str(exc), give_up_after=self._unknown_wait)
            return None
        except RegistryUnavailableError as exc:
            self._note(tp, offset, str(exc))
            return None
        except DeserializationError as exc:
            self._waiting.pop(tp, None)
            return exc
        self._waiting.pop(tp, None)
        return envelope

    def _waited_out(self, tp: TopicPartition, offset: int) -> bool:
        waiting = self._waiting.get(tp)
        return (
            waiting is not None
            and waiting.offset == offset
            and self._clock() - waiting.since >= self._unknown_wait
        )

    def _note(
        self, tp: TopicPartition, offset: int, reason: str, *, give_up_after: float | None = None
    ) -> None:
        now = self._clock()
        waiting = self._waiting.get(tp)
        if waiting is None or waiting.offset != offset:
            waiting = self._waiting[tp] = _Waiting(offset, now, now, WAIT_INITIAL / 2, reason)
            log.warning(
                "%s[%d]@%d waits for the schema registry: %s",
                tp.topic, tp.partition, offset, reason,
            )  # fmt: skip
        waiting.delay = min(waiting.delay * 2, WAIT_MAX)
        waiting.retry_at = now + waiting.delay
        if give_up_after is not None:
            # No try past the deadline: the doubled backoff overshot it by up to WAIT_MAX.
            waiting.retry_at = min(waiting.retry_at, waiting.since + give_up_after)
        waiting.reason = reason
        waiting.resumed = False

    def hold(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Rewinds the partition to the message it waits on and pauses it until its retry."""
        waiting = self._waiting[tp]
        consumer.seek(tp, waiting.offset)
        consumer.pause(tp)

    def resume_due(
        self, consumer: AIOKafkaConsumer, keep_paused: Collection[TopicPartition]
    ) -> None:
        """Resumes this consumer's waiting partitions whose backoff is over.

        Args:
            consumer: One priority's consumer; only its assigned partitions are touched.
            keep_paused: Partitions paused for another reason (a full buffer), left alone.
        """
        if not self._waiting:
            return
        now = self._clock()
        assigned = consumer.assignment()
        topics = consumer.subscription()
        for tp, waiting in list(self._waiting.items()):
            if tp.topic in topics and tp not in assigned:
                del self._waiting[tp]  # revoked: its next owner reads it again
                continue
            if tp not in assigned or waiting.resumed or waiting.retry_at > now:
                continue
            waiting.resumed = True
            if tp not in keep_paused:
                consumer.resume(tp)
